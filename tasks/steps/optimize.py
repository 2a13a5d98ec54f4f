"""Optimize: prune and quantize the trained model the way the tfmot guides do, measure every variant
honestly, select the smallest one that stays within the accuracy budget, and write the version folder that
ships it (TFX's Trainer rewriter: the one artifact evaluate blesses and push ships).

The baseline is the float32 TFLite conversion of the trained model (not the SavedModel). Variants
(`optimize.variants`): post-training dynamic-range, float16 and full-integer int8 (calibrated on train
examples), quantization-aware training, magnitude pruning to `optimize.target_sparsity`, and both
combined. The fine-tunes run in the multi-worker launcher that trains. Every variant is measured with
LiteRT's interpreter, one thread: the task's headline metric on the eval split, bytes, gzip bytes,
batch-1 latency p50/p99 and the sparsity of its weights read from the file. The selection is the
smallest (gzip) variant whose metric is within `optimize.budget` of the baseline. A variant that cannot
be built (a layer tfmot does not support) or converted (a custom layer whose ops are outside the TFLite
builtins: the reason names it) is skipped with the reason recorded.

What ships (`serving.format`): `auto` serves the selected variant's `model.tflite` (TF Serving with
--prefer_tflite_model) and the trained SavedModel when nothing was selected over the float baseline (no
variants, a budget of 0, or none within it); `tflite` always ships a TFLite file (the float32 one at least),
and refuses, in one line, a model that does not convert; `saved_model` ships the SavedModel the selection was
made from (the trained one, or the pruned / QAT fine-tune), never a TFLite file.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from common import digest, storage
from tasks.artifacts.base import Output
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import SAVED_MODEL_DIR, Model
from tasks.artifacts.optimized import (
    REPORT_JSON,
    REPORT_MD,
    REPORT_PLOT,
    TFLITE_FILE,
    VERSION_FOLDER,
    OptimizedProperties,
    ShippedArtifact,
    VariantResult,
)
from tasks.compression import tflite
from tasks.compression.variants import BASELINE, RECIPES, fine_tunes_needed
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.features import LabelSpec, load_arrays
from tasks.metrics import HEADLINE, classification_metrics, regression_metrics
from tasks.models.assemble import PREDICTION, PROBABILITIES
from tasks.serving_bundle import WARMUP_RECORDS, write_version_folder
from tasks.step_config import OptimizeSections
from tasks.training.launch import launcher_for, remote_work_uri
from tasks.training.launcher import TrainError
from tasks.training.spec import CompressSpec

log = logging.getLogger(__name__)


class ServingFormatError(BadInputError):
    """The model cannot ship in the format `serving.format` asks for."""


def run(ctx: StepContext, config: OptimizeSections, *, model: Model, examples: Examples,
        optimized: Output[OptimizedProperties]) -> None:
    import mlflow

    saved_model = model.local(SAVED_MODEL_DIR)  # TensorFlow reads local files only (common.storage)
    label = model.preprocessing.label
    features = model.preprocessing.features
    eval_inputs, targets = load_arrays(examples.split_files("eval"), features, label, limit=config.optimize.max_examples)
    work = ctx.work_dir()
    measure = _Measure(label, eval_inputs, targets, config.optimize.latency_runs)
    files: dict[str, bytes] = {}
    baseline = measure.variant(BASELINE, lambda: tflite.convert(saved_model, "float32"), files)
    variants: list[VariantResult] = []
    sources: dict[str, Path | str] = {"trained": saved_model}
    if baseline.skipped_reason:
        variants = [_skipped(v, label, f"the float32 baseline does not convert: {baseline.skipped_reason}")
                    for v in config.optimize.variants]
    else:
        sources |= _fine_tune(config, ctx, model, saved_model, examples, work,
                              fine_tunes_needed(config.optimize.variants))
        representative = _representative(examples, model, config.optimize.representative_examples)
        for name in config.optimize.variants:
            source, conversion = RECIPES[name]
            if isinstance(sources.get(source), str):  # the fine-tune was skipped: its reason
                variants.append(_skipped(name, label, sources[source]))
                continue
            variants.append(measure.variant(name, lambda s=source, c=conversion: tflite.convert(
                sources[s], c, representative, config.optimize.integer_io), files))
    budget = config.budget
    baseline, *variants = (_with_budget(r, baseline, label, budget) for r in [baseline, *variants])
    selected = _select(baseline, variants, budget)
    source = RECIPES[selected.name][0]  # the model the selected file was converted from
    _write_files(optimized.dir, files, selected.name)
    warmup_inputs = {name: values[:WARMUP_RECORDS] for name, values in eval_inputs.items()}
    shipped = _ship(config, ctx, optimized.dir / VERSION_FOLDER, selected, baseline, source, files, sources,
                    warmup_inputs, features)
    optimized.properties = OptimizedProperties(
        metric_name=HEADLINE[label.task], budget=budget,
        budget_unit="accuracy points" if label.task == "classification" else "relative RMSE increase",
        saved_model_bytes=_dir_bytes(saved_model), baseline=baseline, variants=variants,
        selected=selected.name, served_saved_model=source, shipped=shipped)
    _report(optimized.dir, optimized.properties)
    for name in (REPORT_JSON, REPORT_MD, REPORT_PLOT):
        mlflow.log_artifact(str(optimized.dir / name))
    mlflow.log_metrics({f"{r.name}_{key}": float(getattr(r, key)) for r in [baseline, *variants]
                        for key in ("metric", "gzip_bytes", "latency_ms_p50", "sparsity")
                        if getattr(r, key) is not None})
    mlflow.set_tag("kiln.optimized_variant", selected.name)
    mlflow.set_tags({"kiln.served_format": shipped.format, "kiln.artifact_sha256": shipped.sha256})
    report = (optimized.dir / REPORT_MD).read_text()
    optimized.publish()  # before the fine-tunes' work folder goes
    shutil.rmtree(work, ignore_errors=True)
    if remote := remote_work_uri(config.train, ctx):
        storage.remove(remote)
    log.info("optimize:\n%s", report)


class _Measure:
    """Runs and times each variant's TFLite file the same way: LiteRT, one thread, the whole eval split."""

    def __init__(self, label: LabelSpec, inputs: dict[str, Any], targets: Any, runs: int):
        self.label, self.inputs, self.targets, self.runs = label, inputs, targets, runs
        self.example = {name: values[:1] for name, values in inputs.items()}

    def variant(self, name: str, build: Any, files: dict[str, bytes]) -> VariantResult:
        metric_name = HEADLINE[self.label.task]
        try:
            model = build()
            outputs = tflite.Runner(model)(self.inputs)
            p50, p99 = tflite.latency_ms(model, self.example, self.runs)
            sparsity, layers = tflite.weight_sparsity(model)
        except tflite.ConversionSkipped as exc:
            log.warning("optimize: %s skipped: %s", name, exc)
            return VariantResult(name=name, metric_name=metric_name, skipped_reason=str(exc))
        files[name] = model
        result = VariantResult(name=name, metric_name=metric_name, metric=self._metric(outputs), bytes=len(model),
                               gzip_bytes=len(gzip.compress(model, 9)), latency_ms_p50=round(p50, 4),
                               latency_ms_p99=round(p99, 4), sparsity=round(sparsity, 4), layer_sparsity=layers)
        log.info("optimize: %s", result.model_dump_json(exclude_none=True))
        return result

    def _metric(self, outputs: dict[str, Any]) -> float:
        if self.label.task == "classification":
            return classification_metrics(self.targets, outputs[PROBABILITIES], self.label.classes or [])["accuracy"]
        return regression_metrics(self.targets, np.asarray(outputs[PREDICTION]).reshape(-1))["rmse"]


def _skipped(name: str, label: LabelSpec, reason: str) -> VariantResult:
    return VariantResult(name=name, metric_name=HEADLINE[label.task], skipped_reason=reason)


def _loss(result: VariantResult, baseline: VariantResult, label: LabelSpec) -> float:
    """The variant's metric loss against the baseline in the budget's units."""
    if label.task == "classification":
        return (baseline.metric - result.metric) * 100  # accuracy points
    return (result.metric - baseline.metric) / baseline.metric if baseline.metric else 0.0


def _with_budget(result: VariantResult, baseline: VariantResult, label: LabelSpec, budget: float) -> VariantResult:
    if result.metric is None or baseline.metric is None:
        return result
    return result.model_copy(update={"within_budget": _loss(result, baseline, label) <= budget + 1e-12})


def _select(baseline: VariantResult, variants: list[VariantResult], budget: float) -> VariantResult:
    """The smallest (gzip bytes) variant within the budget; a budget of 0 keeps the float model."""
    if budget == 0 or baseline.metric is None:
        return baseline
    eligible = [baseline, *(v for v in variants if v.within_budget)]
    return min(eligible, key=lambda v: (v.gzip_bytes, v.name != BASELINE))


def _fine_tune(config: OptimizeSections, ctx: StepContext, trained: Model, saved_model: Path, data: Examples,
               work: Path, jobs: list[str]) -> dict[str, Path | str]:
    """Fine-tuned SavedModels by name (or, for a fine-tune tfmot could not build, the reason)."""
    if not jobs:
        return {}
    opt, train = config.optimize, config.train
    # Local workers write into the work folder; pods (train.launcher: kubernetes) share only the artifact
    # store: they read the trained weights from the Model and write to the step's work folder there.
    remote = remote_work_uri(train, ctx)
    base = remote or str(work)
    outputs = {job: storage.join(base, job) for job in jobs}
    spec = CompressSpec(
        train_files=data.split_files("train"), eval_files=data.split_files("eval"),
        num_train=data.properties.row_counts["train"], num_eval=data.properties.row_counts["eval"],
        preprocessing=trained.preprocessing, model=trained.properties.model,
        hparams=trained.properties.hparams, train=train, memory_budget=int(config.data.memory_budget),
        initial_weights=(trained.path(SAVED_MODEL_DIR, "variables", "variables") if remote
                         else str(saved_model / "variables" / "variables")),
        fine_tunes=jobs, fine_tune_epochs=opt.fine_tune_epochs,
        learning_rate=opt.fine_tune_learning_rate or train.learning_rate / 10,
        target_sparsity=opt.target_sparsity, prune_skip=opt.prune_skip,
        outputs=outputs,
        report_path=storage.join(base, "fine_tunes.json"), scratch_dir=storage.join(base, "scratch"),
    )
    # A dead worker restarts the group like in train, but the fine-tunes start over: they are a few
    # epochs each, and a re-export overwrites a half-written one.
    launcher_for(train, ctx).run(spec, train.num_workers, train.worker_timeout_seconds, train.max_restarts)
    report = json.loads(storage.read_text(spec.report_path))
    found: dict[str, Path | str] = {}
    for job in jobs:
        if "skipped" in report.get(job, {}):
            found[job] = report[job]["skipped"]
        elif remote:  # TensorFlow's converter reads local files: a copy in the local work folder
            if not storage.exists(storage.join(outputs[job], "saved_model.pb")):
                raise TrainError(f"the optimize workers finished but left no {job} SavedModel at {outputs[job]}")
            storage.download_dir(outputs[job], work / job)
            found[job] = work / job
        else:
            found[job] = Path(outputs[job])
    return found


def _representative(data: Examples, trained: Model, count: int) -> Any:
    """Train examples, one at a time, as the int8 converter calibrates with them."""
    inputs, _ = load_arrays(data.split_files("train"), trained.preprocessing.features, trained.preprocessing.label,
                            limit=count)

    def examples() -> Any:
        for index in range(len(next(iter(inputs.values())))):
            yield {name: values[index:index + 1] for name, values in inputs.items()}

    return examples


def _write_files(folder: Path, files: dict[str, bytes], selected: str) -> None:
    (folder / "variants").mkdir()
    for name, model in files.items():
        (folder / "variants" / f"{name}.tflite").write_bytes(model)
    if selected in files:
        (folder / TFLITE_FILE).write_bytes(files[selected])


def _ship(config: OptimizeSections, ctx: StepContext, folder: Path, selected: VariantResult, baseline: VariantResult, source: str,
          files: dict[str, bytes], sources: dict[str, Path | str], warmup_inputs: dict[str, Any],
          features: Any) -> ShippedArtifact:
    """Write the version folder `serving.format` asks for (see the module's docstring); its description."""
    wanted = config.serving.format
    if wanted == "auto":
        wanted = "saved_model" if selected.name == BASELINE else "tflite"
    if wanted == "tflite":
        if selected.name not in files:
            raise ServingFormatError(f"serving.format tflite: the model does not convert to TFLite "
                                     f"({baseline.skipped_reason}); use serving.format saved_model or auto")
        write_version_folder(folder, ctx.served_model_name, features, warmup_inputs, tflite_model=files[selected.name])
    else:
        write_version_folder(folder, ctx.served_model_name, features, warmup_inputs,
                             saved_model=Path(sources[source]))
    gzip_bytes = sum(len(gzip.compress(path.read_bytes(), 9)) for _, path in digest.folder_files(folder))
    shipped = ShippedArtifact(variant=selected.name, format=wanted, source=source, sha256=digest.folder_digest(folder),
                              bytes=digest.folder_bytes(folder), gzip_bytes=gzip_bytes)
    log.info("optimize: ships %s as %s (%s bytes, sha256 %s)", shipped.variant, shipped.format, f"{shipped.bytes:,}",
             shipped.sha256)
    return shipped


def _report(folder: Path, props: OptimizedProperties) -> None:
    (folder / REPORT_JSON).write_text(props.model_dump_json(indent=1))
    (folder / REPORT_MD).write_text(props.table())
    _plot(props, folder / REPORT_PLOT)


def _plot(props: OptimizedProperties, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in [props.baseline, *props.variants] if r.gzip_bytes is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for result in measured:
            chosen = result.name == props.selected
            ax.scatter(result.gzip_bytes / 1024, result.metric, s=60 if chosen else 30,
                       color="tab:red" if chosen else "tab:blue")
            ax.annotate(result.name, (result.gzip_bytes / 1024, result.metric), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
        ax.set(xlabel="gzip size (KiB)", ylabel=props.metric_name,
               title=f"size vs {props.metric_name} (selected: {props.selected})")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
