"""`OptimizedModel`: every compressed variant of the model, measured against its float32 TFLite
baseline, the one selected, and the version folder that ships it: the one artifact evaluate scores,
register logs, push ships and the server loads (TFX's Trainer rewriter output, blessed by the Evaluator).

Layout: `version/` (the version folder, see `ShippedArtifact`), `model.tflite` (the selected variant's
file), `variants/<name>.tflite` (every variant built), `report.json`, `report.md` and
`size_vs_metric.png`.
"""

from __future__ import annotations

from typing import Any, Literal

from tasks.artifacts.base import ArtifactType, Properties

TFLITE_FILE = "model.tflite"
VERSION_FOLDER = "version"
REPORT_JSON, REPORT_MD, REPORT_PLOT = "report.json", "report.md", "size_vs_metric.png"
ServedFormat = Literal["saved_model", "tflite"]


class ShippedArtifact(Properties):
    """The version folder that ships: `model.tflite` (served by TF Serving with --prefer_tflite_model) or a
    SavedModel, with its warmup requests; never both, so the format follows the folder."""

    variant: str  # "baseline" or a variant name
    format: ServedFormat
    source: str  # the model it was made from: trained, pruned, qat or pruned_qat
    sha256: str  # common.digest.folder_digest of the folder
    bytes: int  # every file of the folder
    gzip_bytes: int  # each file gzip-compressed, summed


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
    shipped: ShippedArtifact

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
        shipped = self.shipped
        lines.append(f"\nBudget: {self.budget:g} {self.budget_unit} against the float32 baseline; selected "
                     f"{self.selected} (made from the {self.served_saved_model} model). Ships as "
                     f"{shipped.format}: {shipped.bytes:,} bytes ({shipped.gzip_bytes:,} gzip), sha256 "
                     f"{shipped.sha256[:12]}.")
        return "\n".join(lines) + "\n"


class OptimizedModel(ArtifactType[OptimizedProperties]):
    KIND = "OptimizedModel"
    Properties = OptimizedProperties

    @property
    def tflite_path(self) -> str | None:
        """The selected variant's file, when the model converts to TFLite at all."""
        return self.path(TFLITE_FILE) if self.properties.selected_result.bytes else None

    @property
    def version_folder(self) -> str:
        return self.path(VERSION_FOLDER)
