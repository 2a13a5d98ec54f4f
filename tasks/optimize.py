"""Optimize: post-training dynamic-range TFLite of the SavedModel, measured, not assumed.

Reports sizes (SavedModel, .tflite, gzipped .tflite) and the TFLite model's eval accuracy and
agreement with the SavedModel, run with LiteRT's interpreter (tf.lite.Interpreter is deprecated).
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tasks import ingest, tracking
from tasks.artifacts import StepContext, publish_artifact, read_artifact
from tasks.config import PipelineConfig
from tasks.model import INPUT_KEY, PROBABILITIES, SIGNATURE, predict
from tasks.train import SAVED_MODEL_DIR

log = logging.getLogger(__name__)

KIND = "OptimizedModel"
TFLITE_FILE = "model.tflite"


class OptimizeError(RuntimeError):
    """Conversion failed or the converted model does not run."""


def run(config: PipelineConfig, ctx: StepContext, model: str, examples: str) -> dict[str, str]:
    saved_model = Path(read_artifact(model, "Model").path(SAVED_MODEL_DIR))
    mode = config.optimize.tflite
    out_uri = ctx.output_uri("optimize", "optimized")
    properties: dict[str, Any] = {"tflite": mode, "saved_model_bytes": _dir_bytes(saved_model)}
    with tracking.step_run(config, ctx, "optimize"):
        import mlflow

        with publish_artifact(out_uri, KIND, properties) as staging:
            if mode == "dynamic_range":
                tflite = convert_dynamic_range(saved_model)
                (staging / TFLITE_FILE).write_bytes(tflite)
                features, labels = ingest.load_split(examples, "eval")
                tflite_predicted = tflite_probabilities(tflite, features).argmax(axis=1)
                saved_predicted = predict(saved_model, features).argmax(axis=1)
                properties.update(
                    tflite_bytes=len(tflite),
                    tflite_gzip_bytes=len(gzip.compress(tflite, compresslevel=9)),
                    tflite_accuracy=float((tflite_predicted == labels).mean()),
                    saved_model_accuracy=float((saved_predicted == labels).mean()),
                    agreement_with_saved_model=float((tflite_predicted == saved_predicted).mean()),
                    num_examples=int(len(labels)),
                )
            mlflow.log_metrics({k: float(v) for k, v in properties.items() if isinstance(v, int | float)})
    log.info("optimize: %s", ", ".join(f"{k}={v}" for k, v in properties.items()))
    return {"optimized": out_uri}


def convert_dynamic_range(saved_model_dir: Path) -> bytes:
    """Weights int8, activations float: no representative data set needed."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises a zoo of types; one line is what the task log needs
        raise OptimizeError(f"TFLite conversion of {saved_model_dir} failed: {str(exc).splitlines()[0]}") from exc


def tflite_probabilities(tflite: bytes, features: Any) -> Any:
    """Run the TFLite `serving_default` signature over all rows at once."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    runner = interpreter.get_signature_runner(SIGNATURE)
    outputs = runner(**{INPUT_KEY: np.asarray(features, dtype=np.float32)})
    return outputs[PROBABILITIES]


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
