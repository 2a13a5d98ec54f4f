"""Register: one MLflow model version per DAG run — blessed or not — with its whole story attached.

The tf_keras model is logged with `mlflow.tensorflow.log_model` (loads back as Keras or pyfunc with
TF_USE_LEGACY_KERAS=1) with a signature of the served features and an input example; beside it: the
exact version folder TF Serving will load (`tf_serving/`: optimize's version folder, the TFLite file or the
SavedModel that ships with its warmup requests, see `tasks.serving_bundle`; the version is tagged with the
digest evaluate recorded for it, `kiln.artifact_sha256`, and the folder is checked against it before it is
logged), the selected TFLite file (`tflite/`), every compression variant (`compression/`), kiln's contract
(`contract/preprocessing.json`: served features and label, what a later evaluate needs to score this
version as champion), the schema (`schema/schema.pbtxt`), the evaluation (`evaluation/`: metrics,
checks, plots) and a model card (`model_card.md`). Version tags link it to its DAG run, data and
schema, so a served version number leads back to them through MLflow alone (`kiln lineage`).

An unblessed version is registered too, tagged `blessed=false` with its first failed check. No alias
moves here: `challenger` is set by push, once the version is also infra-blessed and loaded as canary.
A retry finds the version by its `kiln.run_id` tag.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import storage
from common.digest import folder_digest
from tasks import tracking
from tasks.artifacts.base import Output
from tasks.artifacts.evaluation import METRICS_FILE, ModelEvaluation
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import CURVES_FILE, SAVED_MODEL_DIR, Model
from tasks.artifacts.optimized import (
    REPORT_JSON,
    REPORT_MD,
    REPORT_PLOT,
    TFLITE_FILE,
    VERSION_FOLDER,
    OptimizedModel,
)
from tasks.artifacts.registered import RegisteredProperties
from tasks.artifacts.schema import SCHEMA_FILE, Schema
from tasks.artifacts.statistics import ExampleStatistics
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.failpoints import failpoint
from tasks.features import FeatureSpec
from tasks.model_card import model_card
from tasks.model_registry import (
    BLESSED_TAG,
    CONTRACT_ARTIFACT_PATH,
    CONTRACT_FILE,
    DIGEST_TAG,
    MODEL_CARD,
    SERVING_ARTIFACT_PATH,
    TRAIN_STATISTICS_TAG,
)
from tasks.models.export import load_serving_function
from tasks.step_config import RegistrySections

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

SCHEMA_ARTIFACT_PATH = "schema"


class NotWhatWasEvaluated(BadInputError):
    """The version folder to register is not the one evaluate scored (its digest differs)."""


def run(ctx: StepContext, config: RegistrySections, *, model: Model, evaluation: ModelEvaluation,
        optimized: OptimizedModel, schema: Schema, examples: Examples, statistics: ExampleStatistics,
        registered: Output[RegisteredProperties]) -> None:
    name = ctx.registered_model_name
    client = tracking.client(ctx)
    folder = optimized.local(VERSION_FOLDER)
    if folder_digest(folder) != evaluation.properties.artifact_sha256:
        raise NotWhatWasEvaluated(f"{optimized.version_folder}: its digest is not the "
                                  f"{evaluation.properties.artifact_sha256[:12]} evaluate blessed; not registered")
    version = find_version(client, name, ctx.run_id)
    if version is not None:
        log.info("register: reusing %s version %s already registered for %s", name, version.version, ctx.run_id)
    else:
        version = _log_and_register(ctx, model, evaluation, optimized, schema, examples, statistics, folder)
        failpoint("register.after_version")
    version = _finish_version(ctx, version, model, evaluation, optimized, examples)
    blessed = evaluation.properties.blessed
    if not client.get_registered_model(name).description and ctx.description:
        client.update_registered_model(name, description=ctx.description)
    registered.properties = RegisteredProperties(
        model_name=name, version=int(version.version), mlflow_run_id=version.run_id,
        model_uri=f"models:/{name}/{version.version}",
        serving_artifact_uri=f"runs:/{version.run_id}/{SERVING_ARTIFACT_PATH}",
        blessed=blessed, artifact_sha256=evaluation.properties.artifact_sha256)
    log.info("register: %s version %s (%s, run %s)", name, version.version,
             "blessed" if blessed else "not blessed", version.run_id)


def find_version(client: MlflowClient, name: str, run_id: str) -> ModelVersion | None:
    """The version registered for this DAG run, if an earlier try got that far."""
    query = f"name = '{name}' and tags.`{tracking.RUN_ID_TAG}` = '{tracking.quoted(run_id)}'"
    versions = client.search_model_versions(query)
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _log_and_register(ctx: StepContext, trained: Model, evaluated: ModelEvaluation, optimized: OptimizedModel,
                      schema: Schema, examples: Examples, statistics: ExampleStatistics, version_folder: Path) -> Any:
    import mlflow
    import tf_keras as keras

    import tasks.models.one_hot  # noqa: F401  registers kiln's layers: the model loads with them, not stand-ins

    saved_model = trained.local(SAVED_MODEL_DIR)  # mlflow and tf_keras read local files (common.storage)
    keras_model = keras.models.load_model(str(saved_model))
    features = trained.preprocessing.features
    example = _example_inputs(features)
    info = mlflow.tensorflow.log_model(keras_model, name="model", pip_requirements=_requirements(),
                                       signature=_signature(saved_model, example), input_example=example)
    mlflow.log_artifacts(str(version_folder), artifact_path=SERVING_ARTIFACT_PATH)
    if optimized.tflite_path:
        mlflow.log_artifact(str(optimized.local(TFLITE_FILE)), artifact_path="tflite")
    for report in (REPORT_JSON, REPORT_MD, REPORT_PLOT):
        mlflow.log_artifact(str(optimized.local(report)), artifact_path="compression")
    mlflow.log_text(trained.preprocessing.model_dump_json(indent=1), f"{CONTRACT_ARTIFACT_PATH}/{CONTRACT_FILE}")
    mlflow.log_artifact(str(schema.local(SCHEMA_FILE)), artifact_path=SCHEMA_ARTIFACT_PATH)
    mlflow.log_artifact(str(evaluated.local(METRICS_FILE)), artifact_path="evaluation")
    if storage.exists(trained.path(CURVES_FILE)):
        mlflow.log_artifact(str(trained.local(CURVES_FILE)), artifact_path="training")
    for plot in evaluated.properties.plots:
        mlflow.log_artifact(str(evaluated.local(plot)), artifact_path="evaluation")
    props = evaluated.properties
    metrics = {f"eval_{k}": v for k, v in props.metrics.items() if v == v}  # NaN is not a metric
    metrics |= {f"trained_eval_{k}": v for k, v in props.metrics_trained.items() if v == v}
    selected = optimized.properties.selected_result
    metrics |= {f"tflite_{key}": float(value) for key, value in selected.model_dump().items()
                if key in ("metric", "bytes", "gzip_bytes", "latency_ms_p50", "sparsity") and value is not None}
    mlflow.log_metrics(metrics)
    examples_props = examples.properties
    # Tags go in with the version itself: a crash cannot leave an untagged (unfindable) version.
    tags = {tracking.RUN_ID_TAG: ctx.run_id, tracking.PIPELINE_TAG: ctx.pipeline, "kiln.dag_id": ctx.dag_id,
            "kiln.try": str(ctx.try_number), "kiln.mlflow_run_id": mlflow.active_run().info.run_id,
            "kiln.parent_run_id": tracking.parent_run(ctx),
            TRAIN_STATISTICS_TAG: statistics.uri,  # the drift monitor's baseline when this version is champion
            "kiln.data_source": examples_props.source, "kiln.data_fingerprint": examples_props.source_sha256,
            "kiln.schema": f"{SCHEMA_ARTIFACT_PATH}/{SCHEMA_FILE}", "kiln.schema_origin": schema.properties.origin,
            "kiln.optimized_variant": selected.name, "kiln.served_saved_model": optimized.properties.served_saved_model,
            DIGEST_TAG: props.artifact_sha256, "kiln.served_format": props.shipped_format,
            "kiln.shipped_bytes": str(optimized.properties.shipped.bytes),  # the approval's size comparison
            BLESSED_TAG: str(props.blessed).lower(), **{k: v for k, v in ctx.lineage.items() if v},
            **{k: f"{v:.6f}" for k, v in props.metrics.items()}}
    if not props.blessed:
        tags["kiln.failed_check"] = (props.first_failure or "")[:5000]
    tuning = trained.properties.tuning
    if tuning:  # the values the version was trained with: the study's best trial's
        tags |= {"kiln.tune_study": tuning["study"], "kiln.tuned_params": json.dumps(tuning["best"]["params"]),
                 "kiln.tune_trials": str(tuning["trials"])}
    version = mlflow.register_model(info.model_uri, ctx.registered_model_name, tags=tags)
    log.info("register: logged %s and registered version %s", info.model_uri, version.version)
    return version


def _finish_version(ctx: StepContext, version: Any, trained: Model, evaluated: ModelEvaluation,
                    optimized: OptimizedModel, examples: Examples) -> Any:
    """The version's model card and description. Also done for a version an earlier try registered
    before it died, so the card lands in the version's own run, not in this try's."""
    client = tracking.client(ctx)
    props = evaluated.properties
    slices = json.loads(storage.read_text(evaluated.path(METRICS_FILE))).get("slices", [])
    lineage = {"DAG": ctx.dag_id, "DAG run": ctx.run_id,
               "MLflow parent run": version.tags.get("kiln.parent_run_id", ""),
               "MLflow register run": version.run_id, **ctx.lineage}
    card = model_card(ctx=ctx, version=int(version.version), run=lineage, examples=examples.properties,
                      model=trained, evaluation=props, slices=slices, optimized=optimized.properties)
    client.log_text(version.run_id, card, MODEL_CARD)
    client.update_model_version(ctx.registered_model_name, version.version, description=_summary(props))
    return client.get_model_version(ctx.registered_model_name, version.version)


def _summary(props: Any) -> str:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in props.metrics.items())
    verdict = "Blessed." if props.blessed else f"Not blessed: {props.first_failure}."
    champion = f" Compared with champion v{props.champion_version}." if props.champion_version else ""
    return f"{verdict} Eval {metrics}.{champion} Model card: {MODEL_CARD} in the run's artifacts."


def _requirements() -> list[str]:
    """The model's pip requirements, stated (MLflow's inference loads the model in a subprocess: slow)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("tensorflow", "tf-keras")]


def _example_inputs(features: list[FeatureSpec]) -> dict[str, Any]:
    """One neutral example of every served feature (for the MLflow signature and input example)."""
    import numpy as np

    neutral = {"float32": 0.0, "string": "", "int64": 0, "bool": False}
    return {f.name: np.full([1, *f.shape], neutral[f.dtype], dtype=object if f.dtype == "string" else f.dtype)
            for f in features}


def _signature(saved_model: Path, example: dict[str, Any]) -> Any:
    """Tensor signature from one real call of the serving signature: the outputs TF Serving answers with."""
    from mlflow.models import infer_signature

    outputs = {k: v.numpy() for k, v in load_serving_function(saved_model)(**example).items()}
    return infer_signature(example, outputs)
