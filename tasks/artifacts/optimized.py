"""`OptimizedModel`: the TFLite conversion of the model (`model.tflite`), measured, or the reason it was skipped."""

from __future__ import annotations

from tasks.artifacts.base import ArtifactType, Properties

TFLITE_FILE = "model.tflite"


class OptimizedProperties(Properties):
    tflite: str  # the conversion tried: dynamic_range or none
    saved_model_bytes: int
    tflite_bytes: int | None = None
    tflite_gzip_bytes: int | None = None
    metric: str | None = None  # the task's headline metric, measured on the eval split
    tflite_metric: float | None = None
    saved_model_metric: float | None = None
    agreement_with_saved_model: float | None = None  # same class / prediction within tolerance
    num_examples: int = 0
    skipped_reason: str | None = None


class OptimizedModel(ArtifactType[OptimizedProperties]):
    KIND = "OptimizedModel"
    Properties = OptimizedProperties

    @property
    def tflite_path(self) -> str | None:
        return self.path(TFLITE_FILE) if self.properties.tflite_bytes else None
