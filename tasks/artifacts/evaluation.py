"""`ModelEvaluation`: the metrics of the artifact that ships on the eval split (and, for context, the trained
float model's), the champion's as served on the same examples, every threshold check with its value and why it
passed or failed, the blessing, and the digest of the version folder it blesses.

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
    metrics: dict[str, float]  # the shipped artifact's overall metrics by name (accuracy, auc, rmse, ...): gated
    metrics_trained: dict[str, float] = {}  # the trained float model's, on the same rows: context, never gated
    num_examples: int
    artifact_sha256: str = ""  # the digest of the version folder that was scored (common.digest)
    shipped_variant: str = ""  # optimize's selection: "baseline" or a variant name
    shipped_format: str = ""  # saved_model or tflite
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
