"""MLflow as the system of record: one parent run per DAG run, one nested child run per step.

Runs are found by tags, not remembered, so a retried task (another process, maybe another
machine) lands in the same parent and the same child run instead of adding duplicates.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.artifacts import StepContext
from tasks.config import PipelineConfig

log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
RUN_ID_TAG = "kiln.run_id"
ROLE_TAG = "kiln.role"
STEP_TAG = "kiln.step"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests the child under it


class TrackingError(RuntimeError):
    """MLflow is not configured, or a run cannot be identified."""


def client() -> Any:
    """An MlflowClient for $MLFLOW_TRACKING_URI; never MLflow's cwd-relative default."""
    import mlflow
    from mlflow import MlflowClient

    uri = os.environ.get(TRACKING_URI_ENV, "").strip()
    if not uri:
        raise TrackingError(f"{TRACKING_URI_ENV} is not set; kiln never falls back to MLflow's cwd-relative default store")
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def experiment_id(mlflow_client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except MlflowException:  # another task created it between our two calls
        return mlflow_client.get_experiment_by_name(name).experiment_id


def parent_run(config: PipelineConfig, ctx: StepContext, data_fingerprint: str | None = None) -> str:
    """The MLflow run id of this DAG run's parent run, created on first use."""
    mlflow_client = client()
    exp = experiment_id(mlflow_client, config.registry.experiment)
    found = _search(mlflow_client, exp, {RUN_ID_TAG: _quoted(ctx.run_id), ROLE_TAG: "parent"})
    if found:
        run_id = found.info.run_id
    else:
        tags = {RUN_ID_TAG: ctx.run_id, ROLE_TAG: "parent", "kiln.pipeline": config.pipeline}
        if sha := git_sha():
            tags["mlflow.source.git.commit"] = sha
        run_id = mlflow_client.create_run(exp, tags=tags, run_name=f"{config.pipeline} {ctx.run_id}").info.run_id
        log.info("mlflow: parent run %s for %s", run_id, ctx.run_id)
    mlflow_client.set_tag(run_id, "kiln.try", str(ctx.try_number))
    if data_fingerprint:
        mlflow_client.set_tag(run_id, "kiln.data_fingerprint", data_fingerprint)
    return run_id


@contextmanager
def step_run(config: PipelineConfig, ctx: StepContext, step: str, data_fingerprint: str | None = None) -> Iterator[Any]:
    """The active child run of `step` (reused on retry); FAILED if the block raises."""
    import mlflow

    parent = parent_run(config, ctx, data_fingerprint)
    mlflow_client = client()
    exp = experiment_id(mlflow_client, config.registry.experiment)
    found = _search(mlflow_client, exp, {PARENT_TAG: parent, STEP_TAG: step})
    if found:
        child = found.info.run_id
    else:
        tags = {PARENT_TAG: parent, STEP_TAG: step, RUN_ID_TAG: ctx.run_id, ROLE_TAG: "step"}
        child = mlflow_client.create_run(exp, tags=tags, run_name=step).info.run_id
    mlflow_client.set_tag(child, "kiln.try", str(ctx.try_number))
    with mlflow.start_run(run_id=child) as active:
        yield active


def finish_parent(config: PipelineConfig, ctx: StepContext, status: str = "FINISHED") -> None:
    """Close the parent run (the DAG's last task, or its failure callback)."""
    mlflow_client = client()
    mlflow_client.set_terminated(parent_run(config, ctx), status=status)


def _search(mlflow_client: Any, exp: str, tags: dict[str, str]) -> Any | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = mlflow_client.search_runs([exp], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def _quoted(value: str) -> str:
    if "'" in value or "\\" in value:
        raise TrackingError(f"run id {value!r} contains a quote or backslash; MLflow filters cannot match it")
    return value


def git_sha() -> str | None:
    """The commit of the kiln checkout, when there is one."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None
