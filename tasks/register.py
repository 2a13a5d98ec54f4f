"""Register: one MLflow model version per successful DAG run, alias `challenger`.

The tf_keras model is logged with `mlflow.tensorflow.log_model` (loads back as Keras or pyfunc
with TF_USE_LEGACY_KERAS=1); the exact SavedModel that TF Serving will run is logged beside it
under `tf_serving/`, and the TFLite file under `tflite/`. A retry finds the version by its
`kiln.run_id` tag and reuses it. `champion` is moved later by the verify step; stages are never used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks import tracking
from tasks.artifacts import StepContext, publish_artifact, read_artifact
from tasks.config import PipelineConfig
from tasks.errors import BadInputError
from tasks.model import PROBABILITIES, load_serving_function
from tasks.optimize import TFLITE_FILE
from tasks.train import SAVED_MODEL_DIR

log = logging.getLogger(__name__)

KIND = "RegisteredModel"
CHALLENGER = "challenger"
SERVING_ARTIFACT_PATH = "tf_serving"


class RegisterError(BadInputError):
    """The model cannot be registered: its evaluation is not blessed."""


def run(config: PipelineConfig, ctx: StepContext, model: str, evaluation: str, optimized: str) -> dict[str, str]:
    model_artifact = read_artifact(model, "Model")
    evaluation_artifact = read_artifact(evaluation, "ModelEvaluation")
    optimized_artifact = read_artifact(optimized, "OptimizedModel")
    if not evaluation_artifact.properties.get("blessed"):
        raise RegisterError(f"refusing to register {model}: evaluation {evaluation} is not blessed")
    name = config.registry.model_name
    client = tracking.client()
    version = find_version(client, name, ctx.run_id)
    if version is not None:
        log.info("register: reusing %s version %s already registered for %s", name, version.version, ctx.run_id)
    else:
        version = _log_and_register(config, ctx, model_artifact, evaluation_artifact, optimized_artifact)
    client.set_registered_model_alias(name, CHALLENGER, version.version)

    out_uri = ctx.output_uri("register", "registered")
    properties = {
        "model_name": name,
        "version": int(version.version),
        "mlflow_run_id": version.run_id,
        "model_uri": f"models:/{name}/{version.version}",
        "serving_artifact_uri": f"runs:/{version.run_id}/{SERVING_ARTIFACT_PATH}",
        "alias": CHALLENGER,
        "accuracy": evaluation_artifact.properties["accuracy"],
    }
    with publish_artifact(out_uri, KIND, properties):
        pass
    log.info("register: %s version %s @%s (run %s)", name, version.version, CHALLENGER, version.run_id)
    return {"registered": out_uri}


def find_version(client: Any, name: str, run_id: str) -> Any | None:
    """The version registered for this DAG run, if an earlier try got that far."""
    query = f"name = '{name}' and tags.`{tracking.RUN_ID_TAG}` = '{tracking._quoted(run_id)}'"
    versions = client.search_model_versions(query)
    return min(versions, key=lambda v: int(v.version)) if versions else None


def _log_and_register(config: PipelineConfig, ctx: StepContext, model_artifact: Any, evaluation_artifact: Any,
                      optimized_artifact: Any) -> Any:
    import mlflow
    import tf_keras as keras

    saved_model = Path(model_artifact.path(SAVED_MODEL_DIR))
    accuracy = evaluation_artifact.properties["accuracy"]
    fingerprint = model_artifact.properties.get("data_fingerprint", "")
    with tracking.step_run(config, ctx, "register") as mlflow_run:
        keras_model = keras.models.load_model(str(saved_model))
        info = mlflow.tensorflow.log_model(keras_model, name="model", signature=_signature(saved_model, keras_model))
        mlflow.log_artifacts(str(saved_model), artifact_path=SERVING_ARTIFACT_PATH)
        tflite = Path(optimized_artifact.path(TFLITE_FILE))
        if tflite.exists():
            mlflow.log_artifact(str(tflite), artifact_path="tflite")
        mlflow.log_metrics({"eval_accuracy": accuracy,
                            **{k: float(v) for k, v in optimized_artifact.properties.items()
                               if isinstance(v, int | float) and not isinstance(v, bool)}})
        # Tags go in with the version itself: a crash cannot leave an untagged (unfindable) version.
        tags = {tracking.RUN_ID_TAG: ctx.run_id, "kiln.pipeline": config.pipeline, "accuracy": f"{accuracy:.6f}",
                "kiln.data_fingerprint": fingerprint, "kiln.mlflow_run_id": mlflow_run.info.run_id}
        version = mlflow.register_model(info.model_uri, config.registry.model_name, tags=tags)
    log.info("register: logged %s and registered version %s", info.model_uri, version.version)
    return tracking.client().get_model_version(config.registry.model_name, version.version)


def _signature(saved_model: Path, keras_model: Any) -> Any:
    """Tensor signature from one real prediction (mlflow's `input_example` path is buggy here)."""
    import numpy as np
    from mlflow.models import infer_signature

    sample = np.zeros((1, keras_model.input_shape[-1]), dtype=np.float32)
    probabilities = load_serving_function(saved_model)(pixels=sample)[PROBABILITIES].numpy()
    return infer_signature(sample, probabilities)
