"""Where a person looks at what a step did: its MLflow run, the model version, the served model.

URLs only for services a browser can reach: an MLflow tracking server (http/https; a SQLite store
has no UI) and TF Serving's REST status route.
"""

from __future__ import annotations

from tasks import tracking
from tasks.artifacts.pushed import PushedModel
from tasks.artifacts.registered import RegisteredModel
from tasks.config import PipelineConfig
from tasks.context import StepContext

MLFLOW_RUN, MODEL_VERSION, SERVED_MODEL = "MLflow run", "MLflow model version", "Served model status"


def mlflow_ui(tracking_uri: str | None) -> str | None:
    return tracking_uri.rstrip("/") if tracking_uri and tracking_uri.startswith(("http://", "https://")) else None


def step_links(step: str, tracked: bool, config: PipelineConfig, ctx: StepContext,
               outputs: dict[str, str]) -> dict[str, str]:
    links: dict[str, str] = {}
    ui = mlflow_ui(ctx.tracking_uri)
    if ui and tracked:
        found = tracking.find_step_run(config, ctx, step)
        if found is not None:
            links[MLFLOW_RUN] = f"{ui}/#/experiments/{found.info.experiment_id}/runs/{found.info.run_id}"
    if ui and "registered" in outputs:
        registered = RegisteredModel.read(outputs["registered"]).properties
        links[MODEL_VERSION] = f"{ui}/#/models/{registered.model_name}/versions/{registered.version}"
    for name in ("pushed", "verification"):
        if name in outputs and ctx.serving is not None:
            links[SERVED_MODEL] = f"{ctx.serving.rest_url.rstrip('/')}/v1/models/{config.served_model_name}"
    if ui and "pushed" in outputs:
        version = PushedModel.read(outputs["pushed"]).properties.version
        links[MODEL_VERSION] = f"{ui}/#/models/{config.registered_model_name}/versions/{version}"
    return links
