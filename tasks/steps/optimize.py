"""Optimize: post-training dynamic-range TFLite of the SavedModel, measured, not assumed.

Reports sizes (SavedModel, .tflite, gzipped .tflite) and the task's headline metric of the TFLite
model beside the SavedModel's, run with LiteRT's interpreter (tf.lite.Interpreter is deprecated).
A model whose ops the TFLite builtins lack (string lookups need Select TF ops, which LiteRT's
interpreter here cannot run) gets no TFLite file; the reason is recorded, the run goes on.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tasks.artifacts.examples import Examples
from tasks.artifacts.model import Model
from tasks.artifacts.optimized import TFLITE_FILE, OptimizedModel, OptimizedProperties
from tasks.config import PipelineConfig
from tasks.context import StepContext
from tasks.features import LabelSpec, load_arrays
from tasks.metrics import classification_metrics, headline, regression_metrics
from tasks.models.assemble import PREDICTION, PROBABILITIES
from tasks.models.export import SIGNATURE, predict

log = logging.getLogger(__name__)


class ConversionSkipped(Exception):
    """The converter or the interpreter cannot handle this model; the message says why."""


def run(config: PipelineConfig, ctx: StepContext, model: str, examples: str) -> dict[str, str]:
    import mlflow

    trained = Model.read(model)
    saved_model = Path(trained.saved_model)
    label = trained.preprocessing.label
    mode = config.optimize.tflite
    out_uri = ctx.output_uri("optimize", "optimized")
    with OptimizedModel.publish(out_uri) as out:
        properties: dict[str, Any] = {"tflite": mode, "saved_model_bytes": _dir_bytes(saved_model)}
        if mode == "dynamic_range":
            inputs, targets = load_arrays(Examples.read(examples).split_files("eval"),
                                          trained.preprocessing.features, label)
            try:
                tflite = convert_dynamic_range(saved_model)
                lite = run_tflite(tflite, inputs)
            except ConversionSkipped as exc:
                properties["skipped_reason"] = str(exc)
                log.warning("optimize: no TFLite file: %s", exc)
            else:
                (out.dir / TFLITE_FILE).write_bytes(tflite)
                properties.update(_measure(label, targets, lite, predict(saved_model, inputs)),
                                  tflite_bytes=len(tflite), tflite_gzip_bytes=len(gzip.compress(tflite, 9)),
                                  num_examples=int(len(targets)))
        out.properties = OptimizedProperties(**properties)
        mlflow.log_metrics({k: float(v) for k, v in properties.items()
                            if isinstance(v, int | float) and not isinstance(v, bool)})
        if properties.get("skipped_reason"):
            mlflow.set_tag("kiln.tflite_skipped", properties["skipped_reason"][:250])
    log.info("optimize: %s", ", ".join(f"{k}={v}" for k, v in properties.items()))
    return {"optimized": out_uri}


def convert_dynamic_range(saved_model_dir: Path) -> bytes:
    """Weights int8, activations float, TFLite builtin ops only: no representative data set needed."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[SIGNATURE])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises a zoo of types; one line is what the record needs
        raise ConversionSkipped(f"TFLite conversion failed: {_unsupported_ops(str(exc))}") from None


def _unsupported_ops(message: str) -> str:
    """The converter's list of ops outside the TFLite builtins, or its first line."""
    ops: list[str] = []
    for marker in ("TF Select ops:", "Resource ops:"):
        for part in message.split(marker)[1:]:
            ops += [op.strip() for op in part.splitlines()[0].split(",") if op.strip()]
    if ops:
        return f"ops outside the TFLite builtins ({', '.join(dict.fromkeys(ops))}); they need Select TF ops, " \
               f"which LiteRT's interpreter here does not include"
    return message.strip().splitlines()[0][:300]


def run_tflite(tflite: bytes, inputs: dict[str, Any]) -> dict[str, Any]:
    """Run the TFLite `serving_default` signature over all rows at once."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        runner = Interpreter(model_content=tflite).get_signature_runner(SIGNATURE)
        return runner(**{name: np.asarray(values) for name, values in inputs.items()})
    except (RuntimeError, ValueError) as exc:
        raise ConversionSkipped(f"LiteRT cannot run the converted model: {str(exc).splitlines()[0][:300]}") from None


def _measure(label: LabelSpec, targets: Any, lite: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
    if label.task == "classification":
        score = lambda out: classification_metrics(targets, out[PROBABILITIES], label.classes or [])  # noqa: E731
        agreement = float(np.mean(lite[PROBABILITIES].argmax(axis=1) == saved[PROBABILITIES].argmax(axis=1)))
    else:
        score = lambda out: regression_metrics(targets, out[PREDICTION])  # noqa: E731
        close = np.abs(lite[PREDICTION] - saved[PREDICTION]) <= 0.01 * (label.std or 1.0)
        agreement = float(np.mean(close))
    name, tflite_value = headline(label.task, score(lite))
    return {"metric": name, "tflite_metric": tflite_value, "saved_model_metric": headline(label.task, score(saved))[1],
            "agreement_with_saved_model": agreement}


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
