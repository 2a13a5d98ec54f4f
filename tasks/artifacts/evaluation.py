"""`ModelEvaluation`: the task's metrics on the eval split, each threshold check, and the blessing.

Layout: `metrics.json` (everything, including per-class numbers and the confusion matrix) and a plot
(`confusion_matrix.png` for classification, `residuals.png` for regression).
"""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties

METRICS_FILE = "metrics.json"


class Check(Properties):
    name: str
    metric: str
    value: float | None
    threshold: float
    passed: bool
    reason: str


class EvaluationProperties(Properties):
    task: str
    metrics: dict[str, float]  # overall metrics by name (accuracy, auc, rmse, ...)
    num_examples: int
    checks: list[Check]
    blessed: bool
    plot: str | None = None


class ModelEvaluation(ArtifactType[EvaluationProperties]):
    KIND = "ModelEvaluation"
    Properties = EvaluationProperties
