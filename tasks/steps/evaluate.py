"""Evaluate: TFX's Evaluator — the candidate as it ships and the current `@champion` as it is served, on the same
eval examples, overall and sliced, against value and change thresholds; bless only a model that passes them all.

The candidate is optimize's version folder, run in-process the way the server runs it (`tasks.served_artifact`:
its `model.tflite` in LiteRT, or its SavedModel), and its digest is recorded: register tags the MLflow version
with it, push refuses any other folder, verify recomputes it from the server's. The champion is its registered
`tf_serving/` folder, run the same way, so a TFLite champion is compared like for like. The trained float
model's metrics are reported beside them as context (`metrics_trained`), never gated.

Metrics: classification accuracy, macro precision/recall/f1, per-class precision/recall, AUC when
binary; regression RMSE, MAE, R². Slices (`evaluate.slices`, TFMA-style feature keys; numeric columns
bucketed by `evaluate.bucket_boundaries`) are scored for both models. Checks, each with its value and
why: `thresholds` on the whole split, `slice_thresholds` on every slice of at least
`min_slice_examples`, `change_thresholds` against the champion (direction from the metric; with no
champion yet there is nothing to compare, and the check passes saying so). Not blessed is an outcome,
not a failure: the evaluation is published and the run goes on to register the version unblessed;
push (gated on the blessing) is skipped.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.digest import folder_digest
from tasks import plots, tracking
from tasks.artifacts.base import Output
from tasks.artifacts.evaluation import METRICS_FILE, Check, EvaluationProperties
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import SAVED_MODEL_DIR, Model
from tasks.artifacts.optimized import VERSION_FOLDER, OptimizedModel
from tasks.config import ChangeThreshold, ConfigError, EvaluateConfig
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.features import FeatureSpec, LabelSpec, Preprocessing, load_arrays
from tasks.metrics import HEADLINE, HIGHER, TASK_METRICS, classification_metrics, passes, regression_metrics
from tasks.model_registry import CHAMPION, aliases, download_version
from tasks.models.assemble import PREDICTION, PROBABILITIES
from tasks.served_artifact import predict_served, served_format
from tasks.step_config import EvaluateSections

log = logging.getLogger(__name__)

MISSING = "(missing)"
MAX_DISTINCT_SLICES = 20  # a column with more values needs bucket boundaries


class EvaluationError(BadInputError):
    """The eval split cannot be scored as configured (labels outside the classes, an unknown slice column)."""


@dataclass
class Scored:
    """One model's answers on the eval split."""

    name: str
    label: LabelSpec
    targets: Any
    outputs: dict[str, Any]
    version: int | None = None  # the champion's registered version

    def metrics(self, rows: Any = None) -> dict[str, Any]:
        targets = self.targets if rows is None else self.targets[rows]
        if self.label.task == "regression":
            predictions = self.outputs[PREDICTION] if rows is None else self.outputs[PREDICTION][rows]
            return regression_metrics(targets, predictions)
        probabilities = self.outputs[PROBABILITIES] if rows is None else self.outputs[PROBABILITIES][rows]
        return classification_metrics(targets, probabilities, self.label.classes or [])


def run(ctx: StepContext, config: EvaluateSections, *, optimized: OptimizedModel, model: Model, examples: Examples,
        evaluation: Output[EvaluationProperties]) -> None:
    import mlflow

    folder = optimized.local(VERSION_FOLDER)
    sha256 = folder_digest(folder)
    shipped = optimized.properties.shipped
    if sha256 != shipped.sha256:  # changed after optimize published it: the blessing would bless other bytes
        raise EvaluationError(f"{optimized.version_folder}: digest {sha256[:12]} is not the {shipped.sha256[:12]} "
                              f"optimize recorded; the version folder was changed")
    files = examples.split_files("eval")
    limit = config.evaluate.max_examples
    eval_set = _EvalSet.load(files, model.preprocessing, limit)
    candidate = eval_set.score(f"candidate ({shipped.variant}, {shipped.format})", folder)
    float_model = eval_set.score("trained float model", model.local(SAVED_MODEL_DIR))
    champion, champion_problem = _champion(ctx, files, limit)
    slices = _slices(config.evaluate, examples, files, model.preprocessing.label, candidate, champion)
    overall = _overall(candidate)
    champion_overall = _overall(champion) if champion else None
    checks = [_value_check(candidate.label, metric, overall.get(metric), threshold)
              for metric, threshold in config.evaluate.thresholds.items()]
    checks += _slice_checks(config.evaluate, candidate.label, slices)
    checks += [_change_check(candidate.label, metric, change, overall.get(metric), champion, champion_overall,
                             champion_problem) for metric, change in config.evaluate.change_thresholds.items()]
    blessed = all(check.passed for check in checks)

    details = candidate.metrics()
    report = {"candidate": details, "trained": float_model.metrics(),
              "champion": {"name": champion.name, "metrics": champion.metrics()} if champion else None,
              "slices": slices, "checks": [c.model_dump() for c in checks]}
    (evaluation.dir / METRICS_FILE).write_text(json.dumps(report, indent=1, default=_json_number))
    plotted = _plots(candidate, details, slices, champion, evaluation.dir)
    evaluation.properties = EvaluationProperties(
        task=candidate.label.task, metrics=overall, metrics_trained=_overall(float_model),
        num_examples=len(candidate.targets), artifact_sha256=sha256, shipped_variant=shipped.variant,
        shipped_format=shipped.format, champion_version=champion.version if champion else None,
        champion_metrics=champion_overall, checks=checks, blessed=blessed, plots=plotted)
    mlflow.log_metrics({f"eval_{k}": v for k, v in overall.items() if not math.isnan(v)}
                       | {f"trained_eval_{k}": v for k, v in evaluation.properties.metrics_trained.items()
                          if not math.isnan(v)}
                       | {"eval_examples": len(candidate.targets)})
    if champion_overall:
        mlflow.log_metrics({f"champion_{k}": v for k, v in champion_overall.items() if not math.isnan(v)})
    for plot in plotted:
        mlflow.log_artifact(str(evaluation.dir / plot))
    mlflow.log_dict(report["checks"], "blessing.json")
    mlflow.set_tags({"kiln.blessed": str(blessed).lower(), "kiln.artifact_sha256": sha256,
                     "kiln.served_format": shipped.format})
    log.info("evaluate: %s", _table(candidate.label.task, overall, champion, champion_overall, slices))
    log.info("evaluate: the trained float model, for context: %s",
             ", ".join(f"{k} {v:.4f}" for k, v in evaluation.properties.metrics_trained.items()))
    for check in checks:
        log.info("evaluate: %-6s %s", "PASS" if check.passed else "FAIL", check.reason)
    log.info("evaluate: %s %s (sha256 %s)", "blessed" if blessed else
             f"NOT blessed ({next(c.reason for c in checks if not c.passed)}):", shipped.format, sha256)


@dataclass
class _EvalSet:
    """The eval split's inputs and targets, loaded once and scored by every model of the same contract."""

    preprocessing: Preprocessing
    inputs: dict[str, Any]
    targets: Any

    @classmethod
    def load(cls, files: list[str], preprocessing: Preprocessing, limit: int) -> _EvalSet:
        inputs, targets = load_arrays(files, preprocessing.features, preprocessing.label, limit=limit)
        return cls(preprocessing, inputs, targets)

    def score(self, name: str, folder: Path, version: int | None = None) -> Scored:
        label = self.preprocessing.label
        if label.task == "classification" and len(self.targets) and int(self.targets.min()) < 0:
            unknown = int((self.targets < 0).sum())
            raise EvaluationError(f"{unknown} eval examples have a label outside the classes "
                                  f"{(label.classes or [])[:10]} of the {name}")
        return Scored(name, label, self.targets, predict_served(folder, self.inputs), version)


def _champion(ctx: StepContext, files: list[str], limit: int) -> tuple[Scored | None, str | None]:
    """(the champion as it is served, scored on the same examples, or why it could not be) — (None, None) on the
    first run."""
    client = tracking.client(ctx)
    version = aliases(client, ctx.registered_model_name).get(CHAMPION)
    if version is None:
        return None, None
    with tempfile.TemporaryDirectory(prefix="kiln-champion-") as folder:
        downloaded = download_version(client, ctx.registered_model_name, version, Path(folder))
        if downloaded.contract is None:
            return None, f"champion v{version} was registered without kiln's contract (preprocessing.json)"
        preprocessing = Preprocessing.model_validate_json(downloaded.contract.read_text())
        served = served_format(downloaded.version_folder)
        try:
            return _EvalSet.load(files, preprocessing, limit).score(f"champion v{version} ({served})",
                                                            downloaded.version_folder, version), None
        except (BadInputError, ValueError, KeyError) as exc:  # e.g. a column the champion needs is gone
            return None, f"champion v{version} could not be scored on this eval split: {exc}"


def _overall(scored: Scored) -> dict[str, float]:
    metrics = scored.metrics()
    return {k: float(v) for k, v in metrics.items() if k in TASK_METRICS[scored.label.task]}


# --- slices ---------------------------------------------------------------------------------------


def _slices(settings: EvaluateConfig, data: Examples, files: list[str], label: LabelSpec, candidate: Scored,
            champion: Scored | None) -> list[dict[str, Any]]:
    """Every slice of every spec: its name, size and both models' metrics."""
    columns = sorted({column for spec in settings.slices for column in spec})
    if not columns:
        return []
    values = _slice_values(data, files, label, columns, settings.bucket_boundaries, settings.max_examples)
    slices = []
    for spec in settings.slices:
        keys = [", ".join(f"{column}={values[column][i]}" for column in spec) for i in range(len(candidate.targets))]
        for key in sorted(set(keys)):
            rows = np.array([k == key for k in keys])
            slices.append({"spec": spec, "slice": key, "examples": int(rows.sum()),
                           "metrics": _plain(candidate.metrics(rows)),
                           "champion_metrics": _plain(champion.metrics(rows)) if champion else None})
    return slices


def _slice_values(data: Examples, files: list[str], label: LabelSpec, columns: list[str],
                  boundaries: dict[str, list[float]], limit: int) -> dict[str, list[str]]:
    """Each eval example's value of each slice column, as the text that names its slice."""
    known = {c.name: c.type for c in data.feature_columns}
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise EvaluationError(f"evaluate.slices: {unknown[0]!r} is not a feature column of {data.properties.source}")
    kinds = {"float": "numeric", "int": "numeric", "string": "string", "bool": "integer"}
    specs = [FeatureSpec(name=f"slice_{i}", kind=kinds[known[c]], columns=[c], column_types=[known[c]])
             for i, c in enumerate(columns)]
    arrays, _ = load_arrays(files, specs, label, limit=limit)
    texts = {}
    for spec, column in zip(specs, columns, strict=True):
        raw = arrays[spec.name]
        if spec.kind == "numeric":
            texts[column] = _numeric_slices(column, raw, boundaries.get(column))
        elif spec.kind == "string":
            texts[column] = [v.decode() if v else MISSING for v in raw]
        else:  # booleans, parsed as int64 0/1
            texts[column] = ["true" if v == 1 else "false" if v == 0 else MISSING for v in raw]
    return texts


def _numeric_slices(column: str, values: Any, edges: list[float] | None) -> list[str]:
    if edges is None:
        distinct = {v for v in values.tolist() if not math.isnan(v)}
        if len(distinct) > MAX_DISTINCT_SLICES:
            raise EvaluationError(f"evaluate.slices: column {column!r} has {len(distinct)} values in the eval split; "
                                  f"give evaluate.bucket_boundaries.{column}")
        return [MISSING if math.isnan(v) else f"{v:g}" for v in values.tolist()]
    edges = sorted(edges)

    def bucket(v: float) -> str:
        if math.isnan(v):
            return MISSING
        index = int(np.searchsorted(edges, v, side="right"))
        if index == 0:
            return f"<{edges[0]:g}"
        if index == len(edges):
            return f">={edges[-1]:g}"
        return f"[{edges[index - 1]:g},{edges[index]:g})"

    return [bucket(v) for v in values.tolist()]


# --- checks ---------------------------------------------------------------------------------------


def _relation(task: str, metric: str) -> str:
    return ">=" if TASK_METRICS[task][metric] == HIGHER else "<="


def _value_check(label: LabelSpec, metric: str, value: float | None, threshold: float,
                 where: str | None = None) -> Check:
    if value is None:  # e.g. auc on a task with more than two classes
        raise ConfigError(f"evaluate thresholds: {metric!r} is not computed for this task "
                          f"({label.num_classes} classes; auc needs exactly two)")
    relation = _relation(label.task, metric)
    passed = passes(label.task, metric, value, threshold)
    on = f" on {where}" if where else ""
    verdict = "meets" if passed else "does not meet"
    setting = f"evaluate.slice_thresholds.{metric}" if where else f"evaluate.thresholds.{metric}"
    return Check(name=f"{metric} {relation} {threshold:g}{on}", metric=metric, slice=where, value=value,
                 threshold=threshold, passed=passed,
                 reason=f"eval {metric}{on} {value:.4f} {verdict} {setting} ({relation} {threshold:g})")


def _slice_checks(settings: EvaluateConfig, label: LabelSpec, slices: list[dict[str, Any]]) -> list[Check]:
    checks = []
    for item in slices:
        if item["examples"] < settings.min_slice_examples:
            continue
        for metric, threshold in settings.slice_thresholds.items():
            value = item["metrics"].get(metric)
            if value is not None and math.isnan(value):  # e.g. auc of a slice holding one class
                checks.append(Check(name=f"{metric} {_relation(label.task, metric)} {threshold:g} on {item['slice']}",
                                    metric=metric, slice=item["slice"], value=None, threshold=threshold, passed=True,
                                    reason=f"{metric} is undefined on {item['slice']} (one class): not checked"))
                continue
            checks.append(_value_check(label, metric, value, threshold, where=item["slice"]))
    return checks


def _change_check(label: LabelSpec, metric: str, change: ChangeThreshold, value: float | None,
                  champion: Scored | None, champion_overall: dict[str, float] | None, problem: str | None) -> Check:
    name = f"{metric} vs champion"
    setting = f"evaluate.change_thresholds.{metric}"
    if champion is None or champion_overall is None:
        if problem:
            return Check(name=name, metric=metric, value=value, threshold=None, passed=False, reason=problem)
        return Check(name=name, metric=metric, value=value, threshold=None, passed=True,
                     reason=f"no champion yet: {metric} not compared ({setting})")
    if value is None or champion_overall.get(metric) is None:
        raise ConfigError(f"{setting}: {metric!r} is not computed for this task")
    base = champion_overall[metric]
    sign = 1.0 if TASK_METRICS[label.task][metric] == HIGHER else -1.0
    improvement = sign * (value - base)
    if change.absolute is not None:
        allowed, required = f"{change.absolute:+g}", change.absolute
    else:
        allowed, required = f"{change.relative:+.1%} of {base:.4f}", change.relative * abs(base)
    passed = improvement >= required - 1e-12
    return Check(name=name, metric=metric, value=value, threshold=base + sign * required, passed=passed,
                 reason=f"{metric} {value:.4f} vs {champion.name} {base:.4f}: change {sign * improvement:+.4f} "
                        f"({'better' if improvement > 0 else 'worse' if improvement < 0 else 'equal'}), "
                        f"{'within' if passed else 'beyond'} {setting} ({allowed} improvement)")


# --- report ---------------------------------------------------------------------------------------


def _plots(candidate: Scored, details: dict[str, Any], slices: list[dict[str, Any]], champion: Scored | None,
           folder: Path) -> list[str]:
    label = candidate.label
    if label.task == "classification":
        made = ["confusion_matrix.png"]
        plots.confusion_matrix(details["confusion_matrix"], label.classes or [], folder / made[0],
                               title=f"eval accuracy {details['accuracy']:.4f}")
    else:
        made = ["residuals.png"]
        plots.residuals(candidate.targets, candidate.outputs[PREDICTION], label.column, folder / made[0],
                        title=f"RMSE {details['rmse']:.3f}, R² {details['r2']:.3f}")
    if slices:
        made.append("slices.png")
        plots.slice_metric(slices, HEADLINE[label.task], folder / made[-1], champion.name if champion else None)
    return made


def _table(task: str, overall: dict[str, float], champion: Scored | None, champion_overall: dict[str, float] | None,
           slices: list[dict[str, Any]]) -> str:
    """A fixed-width table for the task log: overall, then each slice; candidate beside champion."""
    metrics = list(overall)
    rows = [("overall", "", overall, champion_overall)]
    rows += [(s["slice"], str(s["examples"]), s["metrics"], s["champion_metrics"]) for s in slices]
    head = f"{'slice':<32} {'n':>6} " + " ".join(f"{m:>10}" + (f" {'champion':>10}" if champion else "")
                                                 for m in metrics)
    lines = [f"{task} metrics ({champion.name if champion else 'no champion yet'})", head]
    for name, size, mine, theirs in rows:
        cells = []
        for metric in metrics:
            cells.append(f"{mine.get(metric, math.nan):>10.4f}")
            if champion:
                cells.append(f"{(theirs or {}).get(metric, math.nan):>10.4f}")
        lines.append(f"{name[:32]:<32} {size:>6} " + " ".join(cells))
    return "\n".join(lines)


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}


def _json_number(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
