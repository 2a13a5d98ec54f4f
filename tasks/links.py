"""Where a person looks at what a step did: its MLflow run, the model version, the served model.

URLs only for services a browser can reach: an MLflow tracking server (http/https; a SQLite store
has no UI) and TF Serving's REST status route.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tasks import tracking
from tasks.artifacts.promotion import Promotion
from tasks.artifacts.pushed import PushedModel
from tasks.artifacts.registered import RegisteredModel
from tasks.cache import RESULT_KEY
from tasks.context import StepContext

MLFLOW_RUN, MODEL_VERSION, SERVED_MODEL = "MLflow run", "MLflow model version", "Served model status"
CACHED_FROM = "Cached from (MLflow run)"


def mlflow_ui(tracking_uri: str | None) -> str | None:
    return tracking_uri.rstrip("/") if tracking_uri and tracking_uri.startswith(("http://", "https://")) else None


def model_version_url(ui: str, model: str, version: int) -> str:
    return f"{ui}/#/models/{model}/versions/{version}"


def served_status_url(rest_url: str, served_model: str) -> str:
    return f"{rest_url.rstrip('/')}/v1/models/{served_model}"


def step_links(tracked: bool, ctx: StepContext, outputs: dict[str, Any]) -> dict[str, str]:
    """The links of the step `ctx` is given to, from its outputs."""
    links: dict[str, str] = {}
    ui = mlflow_ui(ctx.tracking_uri)
    if ui and tracked:
        found = tracking.find_step_run(ctx, ctx.step)
        if found is not None:
            links[MLFLOW_RUN] = f"{ui}/#/experiments/{found.info.experiment_id}/runs/{found.info.run_id}"
    cached = outputs.get(RESULT_KEY) or {}
    if ui and tracked and cached.get("hit") and cached.get("from_run"):  # the run whose outputs this step reused
        source = tracking.find_step_run(replace(ctx, run_id=cached["from_run"]), ctx.step)
        if source is not None:
            links[CACHED_FROM] = f"{ui}/#/experiments/{source.info.experiment_id}/runs/{source.info.run_id}"
    if ui and "registered" in outputs:
        registered = RegisteredModel.read(outputs["registered"]).properties
        links[MODEL_VERSION] = model_version_url(ui, registered.model_name, registered.version)
    for name in ("pushed", "verification", "promotion"):
        if name in outputs and ctx.serving is not None:
            links[SERVED_MODEL] = served_status_url(ctx.serving.rest_url, ctx.served_model_name)
    if ui and "pushed" in outputs:
        version = PushedModel.read(outputs["pushed"]).properties.version
        links[MODEL_VERSION] = model_version_url(ui, ctx.registered_model_name, version)
    if "aliases" in outputs and ctx.serving is not None:  # a serving sync
        links[SERVED_MODEL] = served_status_url(ctx.serving.rest_url, ctx.served_model_name)
    if ui and outputs.get("champion_version") is not None:  # a sync or a drift check: the champion it read
        links[MODEL_VERSION] = model_version_url(ui, ctx.registered_model_name, outputs["champion_version"])
    if ui and "promotion" in outputs:
        version = Promotion.read(outputs["promotion"]).properties.version
        links[MODEL_VERSION] = model_version_url(ui, ctx.registered_model_name, version)
    return links
