"""`ModelEvaluation`: the candidate's metrics on the eval split, the champion's on the same examples,
every threshold check with its value and why it passed or failed, and the blessing.

Layout: `metrics.json` (everything: per-class numbers, the confusion matrix, every slice's metrics for
both models) and plots: `confusion_matrix.png` or `residuals.png`, and `slices.png` when sliced.
"""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties

METRICS_FILE = "metrics.json"


class Check(Properties):
    name: str  # e.g. "accuracy >= 0.9", "accuracy >= 0.8 on plan=basic", "accuracy vs champion"
    metric: str
    slice: str | None = None  # None: the whole eval split
    value: float | None
    threshold: float | None  # the value the candidate had to reach (None: nothing to compare with)
    passed: bool
    reason: str


class EvaluationProperties(Properties):
    task: str
    metrics: dict[str, float]  # the candidate's overall metrics by name (accuracy, auc, rmse, ...)
    num_examples: int
    champion_version: int | None = None
    champion_metrics: dict[str, float] | None = None
    checks: list[Check]
    blessed: bool
    plots: list[str] = []

    @property
    def first_failure(self) -> str | None:
        return next((c.reason for c in self.checks if not c.passed), None)


class ModelEvaluation(ArtifactType[EvaluationProperties]):
    KIND = "ModelEvaluation"
    Properties = EvaluationProperties
