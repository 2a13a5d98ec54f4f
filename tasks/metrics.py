"""The metrics of each task, which way each one is better, and how they are computed (scikit-learn).

The config checks threshold names against `TASK_METRICS`; evaluate and optimize compute them with the
functions below, so every number kiln reports for a task means the same thing everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

HIGHER, LOWER = "higher", "lower"

TASK_METRICS: dict[str, dict[str, str]] = {
    # macro averages over classes for precision/recall/f1; auc only for binary tasks
    "classification": {"accuracy": HIGHER, "precision": HIGHER, "recall": HIGHER, "f1": HIGHER, "auc": HIGHER},
    "regression": {"rmse": LOWER, "mae": LOWER, "r2": HIGHER},
}

# The metric a task is summarised by (the CLI's "eval" line, the TFLite comparison).
HEADLINE = {"classification": "accuracy", "regression": "rmse"}


def passes(task: str, metric: str, value: float, threshold: float) -> bool:
    """Whether `value` meets `threshold` in the metric's own direction."""
    if math.isnan(value):
        return False
    return value >= threshold if TASK_METRICS[task][metric] == HIGHER else value <= threshold


def classification_metrics(label_ids: Any, probabilities: Any, classes: Sequence[Any]) -> dict[str, Any]:
    """Overall metrics, per-class precision/recall/support and the confusion matrix (rows = true)."""
    import numpy as np
    from sklearn import metrics

    label_ids = np.asarray(label_ids, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    indices = list(range(len(classes)))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        label_ids, predicted, labels=indices, zero_division=0)
    result: dict[str, Any] = {
        "accuracy": float(metrics.accuracy_score(label_ids, predicted)),
        "precision": float(np.mean(precision)),
        "recall": float(np.mean(recall)),
        "f1": float(np.mean(f1)),
    }
    if len(classes) == 2:
        # AUC is undefined when the eval split holds one class only.
        both = len(set(label_ids.tolist())) == 2
        result["auc"] = float(metrics.roc_auc_score(label_ids, probabilities[:, 1])) if both else math.nan
    result["per_class"] = {
        str(name): {"precision": float(p), "recall": float(r), "support": int(s)}
        for name, p, r, s in zip(classes, precision, recall, support, strict=True)
    }
    result["confusion_matrix"] = metrics.confusion_matrix(label_ids, predicted, labels=indices).tolist()
    return result


def regression_metrics(labels: Any, predictions: Any) -> dict[str, float]:
    import numpy as np
    from sklearn import metrics

    labels = np.asarray(labels, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    return {
        "rmse": float(math.sqrt(metrics.mean_squared_error(labels, predictions))),
        "mae": float(metrics.mean_absolute_error(labels, predictions)),
        "r2": float(metrics.r2_score(labels, predictions)) if len(labels) > 1 else math.nan,
    }


def headline(task: str, values: dict[str, Any]) -> tuple[str, float | None]:
    name = HEADLINE[task]
    return name, values.get(name)
