"""Resolve a run once, at trigger time: the pipeline YAML plus the trigger's params plus the deployment
(artifact root, MLflow, TF Serving) become one frozen `RunSnapshot` artifact whose URI every step gets.

The caller (the DAG's first task, or a test) says where the deployment's services are; this module
reads no environment variable of its own, except the `${VARS}` a YAML spells out.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.artifacts.run import SCHEMA_FILE, USER_MODEL_DIR, RunProperties, RunSnapshot
from tasks.config import ConfigError, PipelineConfig, load_config
from tasks.context import ServingEndpoints, StepContext
from tasks.models.contract import is_file_reference
from tasks.registry import SETUP, apply_params, changed_params
from tasks.spans import is_spanned, span_file

log = logging.getLogger(__name__)


def run_config(snapshot: RunSnapshot) -> PipelineConfig:
    """The run's config as it was resolved (overrides applied, paths into the snapshot)."""
    return PipelineConfig.model_validate(snapshot.properties.config)


def run_context(snapshot: RunSnapshot, try_number: int = 1, step: str = "") -> StepContext:
    """The run's context, for one of its steps when `step` is given (its outputs and work folder)."""
    props = snapshot.properties
    lineage = {"kiln.config_path": props.config_path, "kiln.config_sha256": props.config_sha256,
               "kiln.run_snapshot": snapshot.uri, "kiln.dag_id": f"kiln_{props.pipeline}"}
    if props.kiln_commit:
        lineage["mlflow.source.git.commit"] = props.kiln_commit
    return pipeline_context(run_config(snapshot), props.artifact_root, props.run_id, props.tracking_uri,
                            props.serving, try_number, lineage, step)


def pipeline_context(config: PipelineConfig, artifact_root: str, run_id: str, tracking_uri: str | None,
                     serving: ServingEndpoints | None, try_number: int = 1, lineage: dict[str, str] | None = None,
                     step: str = "") -> StepContext:
    """A context carrying the pipeline's identity (names, task, description, experiment) with the run's facts."""
    return StepContext(artifact_root=artifact_root, pipeline=config.pipeline, run_id=run_id, try_number=try_number,
                       tracking_uri=tracking_uri, serving=serving, lineage=lineage or {}, step=step,
                       experiment=config.registry.experiment, registered_model_name=config.registered_model_name,
                       served_model_name=config.served_model_name, task_type=config.task.type,
                       request_log=config.serving.request_log and config.serving.request_log.settings(),
                       description=config.description)

_SERVING_FIELDS = ("rest_url", "grpc_address", "model_base_path", "config_file")


@dataclass(frozen=True)
class Deployment:
    """Where the services of the kiln installation running this DAG are."""

    artifact_root: str
    tracking_uri: str | None = None
    serving: ServingEndpoints | None = None
    tuning_storage: str | None = None  # the Optuna study database of tune sections that name none (a fleet's Postgres)

    def tracking_uri_for(self, config: PipelineConfig) -> str | None:
        return config.registry.tracking_uri or self.tracking_uri


def resolve_run(config_path: str, params: dict[str, Any], deployment: Deployment, run_id: str,
                parsed_placement: dict[str, Any] | None = None) -> str:
    """Write the run snapshot; return its URI. `parsed_placement` is the placement the DAG was built with."""
    path = Path(config_path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    params = changed_params(params, load_config(path, expand_env=False))
    config = with_tuning_storage(with_span(apply_params(load_config(path), params)), deployment)
    if parsed_placement is not None and config.placement.model_dump(mode="json") != parsed_placement:
        raise ConfigError(f"{path}: placement changed since Airflow parsed the DAG; trigger again once it is "
                          f"re-parsed (`kiln run` waits for that)")
    ctx = pipeline_context(config, deployment.artifact_root, run_id, deployment.tracking_uri_for(config),
                           serving_endpoints(config, deployment), step=SETUP.name)
    [output] = SETUP.outputs
    uri = ctx.output_uri(output)
    with RunSnapshot.publish(uri) as out:
        resolved = _carry_files(config, uri, out.dir)
        out.properties = RunProperties(
            pipeline=config.pipeline, run_id=run_id, config_path=str(path), config_sha256=sha256,
            overrides={k: v for k, v in params.items() if v is not None},
            config=resolved.model_dump(mode="json"), artifact_root=deployment.artifact_root,
            tracking_uri=ctx.tracking_uri, serving=ctx.serving, kiln_commit=git_commit(),
            resolved_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    log.info("resolve: %s (sha256 %s) -> %s", path, sha256[:12], uri)
    return uri


def with_tuning_storage(config: PipelineConfig, deployment: Deployment) -> PipelineConfig:
    """A tune section without `storage` gets the deployment's study database (a fleet's Postgres, which tune tasks on
    every worker reach); without one either, tasks.tuning keeps the study in SQLite beside the artifacts."""
    if config.tune is None or config.tune.storage or not deployment.tuning_storage:
        return config
    return config.model_copy(update={"tune": config.tune.model_copy(update={"storage": deployment.tuning_storage})})


def with_span(config: PipelineConfig) -> PipelineConfig:
    """Spanned data: the run reads one file, the newest span unless data.span pins one, and says which."""
    if not is_spanned(config.data.source):
        return config
    path, span = span_file(config.data.source, config.data.span)
    return config.model_copy(update={"data": config.data.model_copy(update={"source": path, "span": span})})


def serving_endpoints(config: PipelineConfig, deployment: Deployment) -> ServingEndpoints | None:
    """The pipeline's own TF Serving (all four `serving` addresses set) or else the deployment's."""
    given = {name: getattr(config.serving, name) for name in _SERVING_FIELDS}
    if not any(given.values()):
        return deployment.serving
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ConfigError(f"serving: set {', '.join(_SERVING_FIELDS[:-1])} and {_SERVING_FIELDS[-1]} together "
                          f"(missing {', '.join(missing)})")
    return ServingEndpoints(**given)


def _carry_files(config: PipelineConfig, uri: str, folder: Path) -> PipelineConfig:
    """Copy the user's model module and curated schema into the snapshot; point the config at the copies."""
    data, train = config.data, config.train
    if data.schema_path:
        _copy(data.schema_path, folder / SCHEMA_FILE, "data.schema_path")
        data = data.model_copy(update={"schema_path": f"{uri}/{SCHEMA_FILE}"})
    if is_file_reference(train.model):
        file, _, function = train.model.rpartition(":")
        name = Path(file).name
        _copy(file, folder / USER_MODEL_DIR / name, "train.model")
        train = train.model_copy(update={"model": f"{uri}/{USER_MODEL_DIR}/{name}:{function}"})
    return config.model_copy(update={"data": data, "train": train})


def _copy(source: str, target: Path, field: str) -> None:
    import fsspec

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with fsspec.open(source, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    except FileNotFoundError:
        raise ConfigError(f"{field}: file not found: {source}") from None


def git_commit() -> str | None:
    """The commit of the kiln checkout, when there is one (the pipeline code's lineage)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None
