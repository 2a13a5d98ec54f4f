"""Evaluate: accuracy of the exported SavedModel on the eval split, and the blessing gate.

The evaluation is published (and logged to MLflow) before the gate fails, so the UI can show
why a model was not blessed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from tasks import ingest, tracking
from tasks.artifacts import StepContext, publish_artifact, read_artifact
from tasks.config import PipelineConfig
from tasks.errors import BadInputError
from tasks.model import predict
from tasks.train import SAVED_MODEL_DIR

log = logging.getLogger(__name__)

KIND = "ModelEvaluation"
METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"


class ModelNotBlessedError(BadInputError):
    """The model's eval accuracy is below `evaluate.min_accuracy`."""


def run(config: PipelineConfig, ctx: StepContext, model: str, examples: str) -> dict[str, str]:
    saved_model = read_artifact(model, "Model").path(SAVED_MODEL_DIR)
    features, labels = ingest.load_split(examples, "eval")
    predicted = predict(saved_model, features).argmax(axis=1)
    num_classes = config.train.num_classes
    confusion = confusion_matrix(labels, predicted, num_classes)
    accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
    per_class = {str(c): _ratio(confusion[c, c], confusion[c].sum()) for c in range(num_classes)}
    threshold = config.evaluate.min_accuracy
    blessed = accuracy >= threshold
    metrics = {"accuracy": accuracy, "per_class_accuracy": per_class, "num_examples": int(len(labels)),
               "min_accuracy": threshold, "blessed": blessed, "confusion_matrix": confusion.tolist()}
    out_uri = ctx.output_uri("evaluate", "evaluation")
    properties = {"accuracy": accuracy, "blessed": blessed, "num_examples": int(len(labels)), "min_accuracy": threshold}
    with tracking.step_run(config, ctx, "evaluate"):
        import mlflow

        with publish_artifact(out_uri, KIND, properties) as staging:
            (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
            plot_confusion_matrix(confusion, staging / CONFUSION_PNG, title=f"eval accuracy {accuracy:.4f}")
            mlflow.log_metrics({"eval_accuracy": accuracy, "eval_examples": len(labels)})
            mlflow.log_metrics({f"eval_accuracy_class_{c}": v for c, v in per_class.items()})
            mlflow.log_artifact(str(staging / CONFUSION_PNG))
            mlflow.set_tag("kiln.blessed", str(blessed).lower())
    log.info("evaluate: accuracy %.4f on %d eval examples (min %.4f): %s", accuracy, len(labels), threshold,
             "blessed" if blessed else "NOT blessed")
    if not blessed:
        raise ModelNotBlessedError(
            f"model {model} is not blessed: eval accuracy {accuracy:.4f} < evaluate.min_accuracy {threshold:.4f}"
        )
    return {"evaluation": out_uri}


def confusion_matrix(labels: Any, predicted: Any, num_classes: int) -> Any:
    """counts[true, predicted]; labels outside [0, num_classes) are an error, not silently dropped."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"eval labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1} (train.num_classes)")
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (labels, np.asarray(predicted, dtype=np.int64)), 1)
    return counts


def plot_confusion_matrix(confusion: Any, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.5))
    try:
        image = ax.imshow(confusion, cmap="Blues")
        fig.colorbar(image, ax=ax)
        n = confusion.shape[0]
        ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
        limit = confusion.max() / 2 if confusion.size else 0
        for (row, col), count in np.ndenumerate(confusion):
            if count:
                ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                        color="white" if count > limit else "black")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else float("nan")
