"""Register: one MLflow model version per successful DAG run, alias `challenger`.

The tf_keras model is logged with `mlflow.tensorflow.log_model` (loads back as Keras or pyfunc with
TF_USE_LEGACY_KERAS=1) with a signature of the served features; the exact SavedModel that TF Serving
will run is logged beside it under `tf_serving/`, the TFLite file under `tflite/`. A retry finds the
version by its `kiln.run_id` tag and reuses it. `champion` is moved later by the verify step; stages
are never used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks import tracking
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.model import Model
from tasks.artifacts.optimized import OptimizedModel
from tasks.artifacts.registered import RegisteredModel, RegisteredProperties
from tasks.config import PipelineConfig
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.features import FeatureSpec
from tasks.models.export import load_serving_function

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
SERVING_ARTIFACT_PATH = "tf_serving"


class RegisterError(BadInputError):
    """The model cannot be registered: its evaluation is not blessed."""


def run(config: PipelineConfig, ctx: StepContext, model: str, evaluation: str, optimized: str) -> dict[str, str]:
    trained = Model.read(model)
    evaluated = ModelEvaluation.read(evaluation)
    if not evaluated.properties.blessed:
        raise RegisterError(f"refusing to register {model}: evaluation {evaluation} is not blessed")
    name = config.registered_model_name
    client = tracking.client(ctx)
    version = find_version(client, name, ctx.run_id)
    if version is not None:
        log.info("register: reusing %s version %s already registered for %s", name, version.version, ctx.run_id)
    else:
        version = _log_and_register(config, ctx, trained, evaluated, OptimizedModel.read(optimized))
    client.set_registered_model_alias(name, CHALLENGER, version.version)

    out_uri = ctx.output_uri("register", "registered")
    with RegisteredModel.publish(out_uri) as out:
        out.properties = RegisteredProperties(
            model_name=name, version=int(version.version), mlflow_run_id=version.run_id,
            model_uri=f"models:/{name}/{version.version}",
            serving_artifact_uri=f"runs:/{version.run_id}/{SERVING_ARTIFACT_PATH}", alias=CHALLENGER)
    log.info("register: %s version %s @%s (run %s)", name, version.version, CHALLENGER, version.run_id)
    return {"registered": out_uri}


def find_version(client: Any, name: str, run_id: str) -> Any | None:
    """The version registered for this DAG run, if an earlier try got that far."""
    query = f"name = '{name}' and tags.`{tracking.RUN_ID_TAG}` = '{tracking.quoted(run_id)}'"
    versions = client.search_model_versions(query)
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _log_and_register(config: PipelineConfig, ctx: StepContext, trained: Model, evaluated: ModelEvaluation,
                      optimized: OptimizedModel) -> Any:
    import mlflow
    import tf_keras as keras

    saved_model = Path(trained.saved_model)
    keras_model = keras.models.load_model(str(saved_model))
    info = mlflow.tensorflow.log_model(keras_model, name="model", pip_requirements=_requirements(),
                                       signature=_signature(saved_model, trained.preprocessing.features))
    mlflow.log_artifacts(str(saved_model), artifact_path=SERVING_ARTIFACT_PATH)
    if optimized.tflite_path:
        mlflow.log_artifact(optimized.tflite_path, artifact_path="tflite")
    metrics = {f"eval_{k}": v for k, v in evaluated.properties.metrics.items() if v == v}  # NaN is not a metric
    metrics |= {k: float(v) for k, v in optimized.properties.model_dump().items()
                if isinstance(v, int | float) and not isinstance(v, bool)}
    mlflow.log_metrics(metrics)
    # Tags go in with the version itself: a crash cannot leave an untagged (unfindable) version.
    tags = {tracking.RUN_ID_TAG: ctx.run_id, "kiln.pipeline": config.pipeline,
            "kiln.data_fingerprint": trained.properties.data_fingerprint,
            "kiln.mlflow_run_id": mlflow.active_run().info.run_id,
            **{k: f"{v:.6f}" for k, v in evaluated.properties.metrics.items()}}
    version = mlflow.register_model(info.model_uri, config.registered_model_name, tags=tags)
    log.info("register: logged %s and registered version %s", info.model_uri, version.version)
    return tracking.client(ctx).get_model_version(config.registered_model_name, version.version)


def _requirements() -> list[str]:
    """The model's pip requirements, stated (MLflow's inference loads the model in a subprocess: slow)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("tensorflow", "tf-keras")]


def sample_inputs(features: list[FeatureSpec]) -> dict[str, Any]:
    """One neutral example of every served feature (for the MLflow signature)."""
    import numpy as np

    neutral = {"float32": 0.0, "string": "", "int64": 0, "bool": False}
    return {f.name: np.full([1, *f.shape], neutral[f.dtype], dtype=object if f.dtype == "string" else f.dtype)
            for f in features}


def _signature(saved_model: Path, features: list[FeatureSpec]) -> Any:
    """Tensor signature from one real call of the serving signature (mlflow's `input_example` path is buggy)."""
    from mlflow.models import infer_signature

    sample = sample_inputs(features)
    outputs = {k: v.numpy() for k, v in load_serving_function(saved_model)(**sample).items()}
    return infer_signature(sample, outputs)
