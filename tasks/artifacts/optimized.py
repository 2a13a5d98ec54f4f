"""`OptimizedModel`: every compressed variant of the model, measured against its float32 TFLite
baseline, and the one selected to ship.

Layout: `model.tflite` (the selected variant's file; rides in the served version folder),
`variants/<name>.tflite` (every variant built), `served_saved_model/` (when the selection was fine-tuned:
the stripped pruned, QAT or pruning-preserving QAT SavedModel it was converted from, which TF Serving then
serves, so the SavedModel and the TFLite file are the same model), `report.json`, `report.md` and
`size_vs_metric.png`.
"""

from __future__ import annotations

from typing import Any

from tasks.artifacts.base import ArtifactType, Properties

TFLITE_FILE = "model.tflite"
SERVED_SAVED_MODEL = "served_saved_model"
REPORT_JSON, REPORT_MD, REPORT_PLOT = "report.json", "report.md", "size_vs_metric.png"


class VariantResult(Properties):
    name: str
    metric_name: str
    metric: float | None = None  # the task's headline metric on the eval split, run by LiteRT
    bytes: int | None = None
    gzip_bytes: int | None = None
    latency_ms_p50: float | None = None  # batch 1, one thread
    latency_ms_p99: float | None = None
    sparsity: float | None = None  # share of zero weights in the file's FC/conv kernels
    layer_sparsity: dict[str, float] = {}  # per kernel tensor of the file
    within_budget: bool | None = None
    skipped_reason: str | None = None  # why the variant could not be built or run


class OptimizedProperties(Properties):
    metric_name: str
    budget: float
    budget_unit: str  # "accuracy points" or "relative RMSE increase"
    saved_model_bytes: int
    baseline: VariantResult
    variants: list[VariantResult]
    selected: str  # "baseline" or a variant name
    served_saved_model: str  # the selection's source: trained, pruned, qat or pruned_qat

    @property
    def selected_result(self) -> VariantResult:
        return next((v for v in self.variants if v.name == self.selected), self.baseline)

    def table(self) -> str:
        """A Markdown table of the baseline and every variant, the selection marked."""

        def cell(value: Any, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        lines = [f"| variant | {self.metric_name} | bytes | gzip bytes | p50 ms | p99 ms | sparsity | within budget |",
                 "|---|--:|--:|--:|--:|--:|--:|:-:|"]
        for result in [self.baseline, *self.variants]:
            name = f"**{result.name}** (selected)" if result.name == self.selected else result.name
            if result.skipped_reason:
                lines.append(f"| {name} | skipped: {result.skipped_reason} |||||||")
                continue
            lines.append(f"| {name} | {cell(result.metric, '.4f')} | {cell(result.bytes, ',')} | "
                         f"{cell(result.gzip_bytes, ',')} | {cell(result.latency_ms_p50, '.3f')} | "
                         f"{cell(result.latency_ms_p99, '.3f')} | {cell(result.sparsity, '.1%')} | "
                         f"{'yes' if result.within_budget else 'no'} |")
        lines.append(f"\nBudget: {self.budget:g} {self.budget_unit} against the float32 baseline; selected "
                     f"{self.selected} (served SavedModel: {self.served_saved_model}).")
        return "\n".join(lines) + "\n"


class OptimizedModel(ArtifactType[OptimizedProperties]):
    KIND = "OptimizedModel"
    Properties = OptimizedProperties

    @property
    def tflite_path(self) -> str | None:
        """The selected variant's file, when the model converts to TFLite at all."""
        return self.path(TFLITE_FILE) if self.properties.selected_result.bytes else None

    @property
    def fine_tuned_saved_model(self) -> str | None:
        """The SavedModel to serve when the selection was fine-tuned (None: serve the trained one)."""
        return self.path(SERVED_SAVED_MODEL) if self.properties.served_saved_model != "trained" else None
