"""MLflow as the system of record: one parent run per DAG run, one nested child run per tracked step.

Runs are found by tags, not remembered, so a retried task (another process, maybe another
machine) lands in the same parent and the same child run instead of adding duplicates. The tracking
URI comes from the run snapshot (`ctx.tracking_uri`), never from MLflow's cwd-relative default.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.context import StepContext
from tasks.step_config import ServingSections

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

RUN_ID_TAG = "kiln.run_id"
ROLE_TAG = "kiln.role"
STEP_TAG = "kiln.step"
PIPELINE_TAG = "kiln.pipeline"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests the child under it


class TrackingError(RuntimeError):
    """A run cannot be identified."""


def client(ctx: StepContext) -> MlflowClient:
    """An MlflowClient for the run's tracking URI (also made the process default for `mlflow.*` calls)."""
    import mlflow
    from mlflow import MlflowClient

    uri = ctx.require_tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=_artifact_location(mlflow_client))
    except MlflowException:  # another task created it between our two calls
        return mlflow_client.get_experiment_by_name(name).experiment_id


def parent_run(ctx: StepContext, tags: dict[str, str] | None = None) -> str:
    """The MLflow run id of this DAG run's parent run, created (with `tags`) on first use."""
    mlflow_client = client(ctx)
    exp = experiment_id(mlflow_client, ctx.experiment)
    # Scheduled runs of two pipelines share a run id (scheduled__<time>): the pipeline tells them apart.
    found = _search(mlflow_client, exp, {RUN_ID_TAG: quoted(ctx.run_id), PIPELINE_TAG: ctx.pipeline,
                                         ROLE_TAG: "parent"})
    if found:
        run_id = found.info.run_id
    else:
        tags = {**(tags or {}), RUN_ID_TAG: ctx.run_id, ROLE_TAG: "parent", PIPELINE_TAG: ctx.pipeline}
        run_id = mlflow_client.create_run(exp, tags=tags, run_name=f"{ctx.pipeline} {ctx.run_id}").info.run_id
        log.info("mlflow: parent run %s for %s", run_id, ctx.run_id)
    mlflow_client.set_tag(run_id, "kiln.try", str(ctx.try_number))
    return run_id


def tag_parent(ctx: StepContext, tags: dict[str, str]) -> None:
    mlflow_client = client(ctx)
    run_id = parent_run(ctx)
    for key, value in tags.items():
        mlflow_client.set_tag(run_id, key, value)


def tag_data(ctx: StepContext, source: str, fingerprint: str, span: int | None) -> None:
    """The run's data on its parent run (what `kiln lineage` reads): by ingest, or by a cache hit of it."""
    tag_parent(ctx, {"kiln.data_source": source, "kiln.data_fingerprint": fingerprint,
                     **({"kiln.data_span": str(span)} if span is not None else {})})


def find_step_run(ctx: StepContext, step: str) -> Any | None:
    """The child run of `step` in this DAG run, if the step opened one."""
    mlflow_client = client(ctx)
    exp = experiment_id(mlflow_client, ctx.experiment)
    parent = _search(mlflow_client, exp, {RUN_ID_TAG: quoted(ctx.run_id), PIPELINE_TAG: ctx.pipeline,
                                          ROLE_TAG: "parent"})
    return _search(mlflow_client, exp, {PARENT_TAG: parent.info.run_id, STEP_TAG: step}) if parent else None


@contextmanager
def step_run(ctx: StepContext, parent_tags: dict[str, str] | None = None) -> Iterator[Any]:
    """The active child run of the step `ctx` is given to (reused on retry); FAILED if the block raises."""
    import mlflow

    parent = parent_run(ctx, parent_tags)
    mlflow_client = client(ctx)
    exp = experiment_id(mlflow_client, ctx.experiment)
    found = _search(mlflow_client, exp, {PARENT_TAG: parent, STEP_TAG: ctx.step})
    if found:
        child = found.info.run_id
    else:
        tags = {PARENT_TAG: parent, STEP_TAG: ctx.step, RUN_ID_TAG: ctx.run_id, ROLE_TAG: "step"}
        child = mlflow_client.create_run(exp, tags=tags, run_name=ctx.step).info.run_id
    mlflow_client.set_tag(child, "kiln.try", str(ctx.try_number))
    with mlflow.start_run(run_id=child) as active:
        yield active


def log_params(params: dict[str, Any]) -> None:
    """MLflow params are write-once: a retry whose config changed keeps the first try's values."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.log_params(params)
    except MlflowException as exc:
        log.warning("MLflow kept the params of an earlier try: %s", str(exc).splitlines()[0][:300])


def finish_run(ctx: StepContext, config: ServingSections, outputs: dict[str, str]) -> None:
    """Close the parent run (the DAG's teardown task), from the outputs the steps left behind:
    FINISHED when the model was promoted, evaluated, registered and rightly not pushed, or verified and
    then not approved (rejected, or the approval timed out); else FAILED."""
    from tasks.artifacts.approval import ApprovalDecision
    from tasks.artifacts.evaluation import ModelEvaluation

    promoted = "promotion" in outputs
    not_blessed = ("evaluation" in outputs and "registered" in outputs
                   and not ModelEvaluation.read(outputs["evaluation"]).properties.blessed
                   and not config.serving.force_push_reason)
    decision = ApprovalDecision.read(outputs["approval"]).properties.decision if "approval" in outputs else None
    mlflow_client = client(ctx)
    run_id = parent_run(ctx)
    mlflow_client.set_tag(run_id, "kiln.promoted", str(promoted).lower())
    if decision is not None:
        mlflow_client.set_tag(run_id, "kiln.approval", decision)
    not_approved = decision in ("rejected", "timed_out")
    mlflow_client.set_terminated(run_id, status="FINISHED" if promoted or not_blessed or not_approved else "FAILED")


def _artifact_location(mlflow_client: MlflowClient) -> str | None:
    """Beside a SQLite store's file; MLflow's default there is ./mlruns under whatever the cwd is.
    A tracking server (the stack) decides itself: None."""
    uri = mlflow_client.tracking_uri
    if uri.startswith("sqlite:///"):
        return str(Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    return None


def _search(mlflow_client: MlflowClient, exp: str, tags: dict[str, str]) -> Any | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow_client.search_runs([exp], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def quoted(value: str) -> str:
    if "'" in value or "\\" in value:
        raise TrackingError(f"run id {value!r} contains a quote or backslash; MLflow filters cannot match it")
    return value
