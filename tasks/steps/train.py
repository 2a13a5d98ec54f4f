"""Train: N worker processes build kiln's model around `train.model` and fit it; publish the Model.

Backups and metrics live in a work folder that survives a retry, so a retried task resumes at the
last finished epoch (BackupAndRestore); within a try, the launcher restarts the worker group when a
worker dies (`train.max_restarts`), and it resumes the same way. Local workers write into the Model's
staging folder and a local work folder; pods (`train.launcher: kubernetes`) share only the artifact
store, so they get URLs in the step's work folder there, and the step reads their results back. The Model's properties carry the served features and label:
the contract every later step and every client relies on.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from common import storage
from tasks import plots, tracking, tuning
from tasks.artifacts.base import Output
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import CURVES_FILE, METRICS_FILE, SAVED_MODEL_DIR, ModelProperties
from tasks.artifacts.transform import TransformGraph
from tasks.context import StepContext
from tasks.step_config import TrainSections
from tasks.training.launch import launcher_for, remote_work_uri
from tasks.training.launcher import TrainError, read_metrics
from tasks.training.spec import TrainSpec

log = logging.getLogger(__name__)


def run(ctx: StepContext, config: TrainSections, *, examples: Examples, transform: TransformGraph,
        model: Output[ModelProperties]) -> None:
    import mlflow

    preprocessing = transform.preprocessing()
    work_dir = ctx.work_dir()
    train, tuned = config.train, None
    if config.tune is not None:  # the best trial's values, from the study the tune tasks filled
        tuned = tuning.outcome(ctx, config.tune, config.train, examples, transform)
        train = tuning.with_values(train, tuned.best_params)
        mlflow.log_metric(f"tune_best_{config.tune.objective}", tuned.best_metric)
        mlflow.set_tag("kiln.tune_study", tuned.study)
        log.info("train: the best of %d trials (%s %.4f): %s", tuned.trials, config.tune.objective,
                 tuned.best_metric, tuned.best_params)
    remote = remote_work_uri(train, ctx)  # None: the workers write local paths
    tracking.log_params({f"train.{k}": v for k, v in train.model_dump(mode="json").items()
                         if k not in ("hparams", "kubernetes")}
                        | {f"train.hparams.{k}": v for k, v in train.hparams.items()})
    spec = TrainSpec(
        train_files=examples.split_files("train"),
        eval_files=examples.split_files("eval"),
        num_train=examples.properties.row_counts["train"],
        num_eval=examples.properties.row_counts["eval"],
        preprocessing=preprocessing,
        model=train.model,
        hparams=train.hparams,
        train=train,
        memory_budget=int(config.data.memory_budget),
        **(_worker_paths(remote) if remote else {
            "saved_model_dir": str(model.dir / SAVED_MODEL_DIR),
            "metrics_path": str(work_dir / METRICS_FILE),
            "backup_dir": str(work_dir / "backup"),
            "scratch_dir": str(work_dir / "scratch"),
        }),
    )
    started = time.monotonic()
    launcher = launcher_for(train, ctx)
    recovery = launcher.run(spec, train.num_workers, train.worker_timeout_seconds, train.max_restarts)
    train_seconds = round(time.monotonic() - started, 2)
    if remote:
        _download_saved_model(spec.saved_model_dir, model.dir / SAVED_MODEL_DIR)
    history = read_metrics(spec.metrics_path)
    (model.dir / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
    final = {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}
    for record in history:
        mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
    mlflow.log_metrics({"train_seconds": train_seconds, "train_restarts": recovery.restarts,
                        "train_resumed_from_epoch": recovery.resumed_from_epoch})
    if history:
        plots.training_curves(history, model.dir / CURVES_FILE)
        mlflow.log_artifact(str(model.dir / CURVES_FILE))
    model.properties = ModelProperties(
        preprocessing=preprocessing, model=train.model, hparams=train.hparams, num_workers=train.num_workers,
        epochs=train.epochs, data_fingerprint=examples.properties.source_sha256,
        mlflow_run_id=mlflow.active_run().info.run_id, train_seconds=train_seconds, final_metrics=final,
        restarts=recovery.restarts, resumed_from_epoch=recovery.resumed_from_epoch,
        learning_rate=train.learning_rate, batch_size=train.batch_size,
        tuning=tuned.summary() if tuned is not None else None,
    )
    model.publish()  # before the backups go: a publish that fails can still resume from them
    shutil.rmtree(work_dir, ignore_errors=True)
    if remote:
        storage.remove(remote)
    log.info("train: %d epochs on %d worker(s) in %.1fs (%d restart(s)), final %s -> %s", train.epochs,
             train.num_workers, train_seconds, recovery.restarts, _brief(final), model.uri)


def _worker_paths(work_uri: str) -> dict[str, str]:
    return {"saved_model_dir": storage.join(work_uri, SAVED_MODEL_DIR),
            "metrics_path": storage.join(work_uri, METRICS_FILE),
            "backup_dir": storage.join(work_uri, "backup"),
            "scratch_dir": storage.join(work_uri, "scratch")}  # the workers use a local folder of their own


def _download_saved_model(uri: str, folder: Path) -> None:
    """The chief uploads `saved_model.pb` last: without it the upload did not finish."""
    if not storage.exists(storage.join(uri, "saved_model.pb")):
        raise TrainError(f"the train workers finished but left no SavedModel at {uri}")
    storage.download_dir(uri, folder)


def _brief(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
