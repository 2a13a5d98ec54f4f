"""Evaluate: the task's metrics of the exported SavedModel on the eval split, and the blessing gate.

Classification: accuracy, macro precision/recall/f1, per-class precision/recall, AUC when binary, and
a confusion matrix plot. Regression: RMSE, MAE, R² and a residual plot. Each `evaluate.thresholds`
entry is a check in the metric's own direction; the model is blessed when all pass. The evaluation is
published (and logged to MLflow) before the gate fails, so the UI can show why.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from tasks.artifacts.evaluation import METRICS_FILE, Check, EvaluationProperties, ModelEvaluation
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import Model
from tasks.config import ConfigError, PipelineConfig
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.features import LabelSpec, load_arrays
from tasks.metrics import TASK_METRICS, classification_metrics, passes, regression_metrics
from tasks.models.assemble import PREDICTION, PROBABILITIES
from tasks.models.export import predict

log = logging.getLogger(__name__)


class ModelNotBlessedError(BadInputError):
    """A threshold check failed: the model does not meet the bar."""


class EvaluationError(BadInputError):
    """The eval split cannot be scored (e.g. labels outside the classes)."""


def run(config: PipelineConfig, ctx: StepContext, model: str, examples: str) -> dict[str, str]:
    import mlflow

    trained = Model.read(model)
    label = trained.preprocessing.label
    inputs, targets = load_arrays(Examples.read(examples).split_files("eval"), trained.preprocessing.features, label)
    outputs = predict(trained.saved_model, inputs)
    details = _score(label, targets, outputs)
    overall = {k: v for k, v in details.items() if k in TASK_METRICS[label.task]}
    checks = [_check(label, name, overall.get(name), threshold) for name, threshold in config.evaluate.thresholds.items()]
    blessed = all(check.passed for check in checks)
    out_uri = ctx.output_uri("evaluate", "evaluation")
    with ModelEvaluation.publish(out_uri) as out:
        (out.dir / METRICS_FILE).write_text(json.dumps({**details, "checks": [c.model_dump() for c in checks]},
                                                       indent=1))
        plot = _plot(label, targets, outputs, details, out.dir)
        out.properties = EvaluationProperties(task=label.task, metrics=overall, num_examples=len(targets),
                                              checks=checks, blessed=blessed, plot=plot)
        mlflow.log_metrics({f"eval_{k}": v for k, v in overall.items() if not math.isnan(v)}
                           | {"eval_examples": len(targets)})
        mlflow.log_artifact(str(out.dir / plot))
        mlflow.set_tag("kiln.blessed", str(blessed).lower())
    for check in checks:
        log.info("evaluate: %-10s %s", "passed" if check.passed else "FAILED", check.reason)
    log.info("evaluate: %s on %d eval examples: %s", label.task, len(targets),
             ", ".join(f"{k}={v:.4f}" for k, v in overall.items()))
    failed = [c for c in checks if not c.passed]
    if failed:
        raise ModelNotBlessedError(f"model {model} is not blessed: {failed[0].reason}")
    return {"evaluation": out_uri}


def _score(label: LabelSpec, targets: Any, outputs: dict[str, Any]) -> dict[str, Any]:
    if label.task == "regression":
        return regression_metrics(targets, outputs[PREDICTION])
    unknown = int((targets < 0).sum())
    if unknown:
        raise EvaluationError(f"{unknown} eval examples have a label outside the classes {label.classes[:10]}")
    return classification_metrics(targets, outputs[PROBABILITIES], label.classes or [])


def _check(label: LabelSpec, metric: str, value: float | None, threshold: float) -> Check:
    if value is None:  # e.g. auc on a task with more than two classes
        raise ConfigError(f"evaluate.thresholds: {metric!r} is not computed for this task "
                          f"({label.num_classes} classes; auc needs exactly two)")
    passed = passes(label.task, metric, value, threshold)
    relation = ">=" if TASK_METRICS[label.task][metric] == "higher" else "<="
    verdict = "meets" if passed else "does not meet"
    return Check(name=f"{metric} {relation} {threshold:g}", metric=metric, value=value, threshold=threshold,
                 passed=passed, reason=f"eval {metric} {value:.4f} {verdict} evaluate.thresholds.{metric} "
                                       f"({relation} {threshold:g})")


def _plot(label: LabelSpec, targets: Any, outputs: dict[str, Any], details: dict[str, Any], folder: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display on workers
    import matplotlib.pyplot as plt

    if label.task == "classification":
        name = "confusion_matrix.png"
        confusion = np.asarray(details["confusion_matrix"])
        fig, ax = plt.subplots(figsize=(6, 5.5))
        try:
            image = ax.imshow(confusion, cmap="Blues")
            fig.colorbar(image, ax=ax)
            ticks = range(len(label.classes or []))
            ax.set(xticks=ticks, yticks=ticks, xticklabels=[str(c) for c in label.classes or []],
                   yticklabels=[str(c) for c in label.classes or []], xlabel="predicted", ylabel="true",
                   title=f"eval accuracy {details['accuracy']:.4f}")
            limit = confusion.max() / 2 if confusion.size else 0
            for (row, col), count in np.ndenumerate(confusion):
                if count:
                    ax.text(col, row, str(count), ha="center", va="center", fontsize=8,
                            color="white" if count > limit else "black")
            fig.tight_layout()
            fig.savefig(folder / name, dpi=100)
        finally:
            plt.close(fig)
        return name
    name = "residuals.png"
    predicted = np.asarray(outputs[PREDICTION], dtype=np.float64)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    try:
        left.scatter(targets, predicted, s=8, alpha=0.6)
        low, high = float(min(targets.min(), predicted.min())), float(max(targets.max(), predicted.max()))
        left.plot([low, high], [low, high], color="grey", linewidth=1)
        left.set(xlabel=f"true {label.column}", ylabel="predicted", title=f"RMSE {details['rmse']:.3f}")
        right.hist(predicted - targets, bins=30)
        right.set(xlabel="predicted - true", ylabel="examples", title=f"residuals (R² {details['r2']:.3f})")
        fig.tight_layout()
        fig.savefig(folder / name, dpi=100)
    finally:
        plt.close(fig)
    return name
