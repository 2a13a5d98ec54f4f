"""Train mode of the training worker: fit the model with per-epoch metrics and `BackupAndRestore`, then export it.

Outputs at URLs (pods, which share only object storage with the step): the chief's metrics are appended to a
local file that is uploaded whole after each epoch, so the launcher and the step read progress and resumed
epochs from the URL. `BackupAndRestore` needs a file system TensorFlow can write, so with a URL it backs up to a
folder local to the process: every worker downloads the URL's backup into it before `fit` (a restarted pod
resumes from there) and the chief mirrors it to the URL after each epoch, the checkpoint's index file last.

TensorFlow and tf_keras are imported inside the functions: `tasks.training.worker` imports this module before
it creates the strategy, which must come before any other TensorFlow op.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from common import storage
from tasks.training.launcher import PROGRESS_MARK
from tasks.training.spec import TrainSpec
from tasks.training.worker_run import Scratch, WorkerRun, log


def train(spec: TrainSpec, run: WorkerRun) -> None:
    import tf_keras as keras

    from tasks.features import dataset
    from tasks.models.assemble import build_model, compile_model

    config, preprocessing, task_id = spec.train, run.preprocessing, run.task_id
    num_workers, global_batch, steps_per_epoch = run.num_workers, run.global_batch, run.steps_per_epoch
    keras.utils.set_random_seed(config.seed)

    validation_steps = max(1, math.ceil(spec.num_eval / global_batch))
    features, label = preprocessing.features, preprocessing.label
    train_data = dataset(spec.train_files, features, label, global_batch, shuffle_seed=config.seed, repeat=True,
                         memory_budget=spec.memory_budget, worker=(task_id, num_workers))
    eval_data = dataset(spec.eval_files, features, label, global_batch, shuffle_seed=None, repeat=True,
                        memory_budget=spec.memory_budget)

    policy = set_precision_policy(config.mixed_precision)
    with run.strategy.scope():
        model = build_model(preprocessing, spec.model, spec.hparams)
        compile_model(model, label, config.learning_rate, jit_compile=config.jit_compile)

    with Scratch(spec.scratch_dir) as scratch:
        # Callbacks run in list order: an epoch's metrics line is written before its backup, so a worker
        # killed in between repeats the epoch (read_metrics keeps its last record) instead of losing its line.
        metrics = MetricsFile(spec.metrics_path, scratch.path) if run.is_chief else None
        callbacks = [epoch_metrics(metrics, config.epochs, task_id),
                     *backup_callbacks(spec.backup_dir, scratch.path, run.is_chief)]
        log.info("%s worker %d/%d: %d epochs x %d steps, global batch %d (%d replicas), %s parameters, %s%s",
                 PROGRESS_MARK, task_id, num_workers, config.epochs, steps_per_epoch, global_batch,
                 run.strategy.num_replicas_in_sync, f"{model.count_params():,}", policy,
                 ", XLA" if config.jit_compile else "")
        model.fit(train_data, epochs=config.epochs, steps_per_epoch=steps_per_epoch, validation_data=eval_data,
                  validation_steps=validation_steps, callbacks=callbacks, verbose=0)

        run.export(model, spec.saved_model_dir, scratch.path, f"worker-{task_id}")
    log.info("%s worker %d done", PROGRESS_MARK, task_id)


def set_precision_policy(policy: str | None) -> str:
    """Keras' global dtype policy for the model about to be built; the one in effect. mixed_float16 needs a GPU
    (on CPU it is slower than float32 and TF warns of it): without one, a warning and float32."""
    import tensorflow as tf
    import tf_keras as keras

    if policy == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
        log.warning("%s train.mixed_precision mixed_float16 needs a GPU and this worker has none: training in "
                    "float32", PROGRESS_MARK)
        policy = None
    keras.mixed_precision.set_global_policy(policy or "float32")
    return policy or "float32"


def backup_callbacks(backup_dir: str, scratch: Path, is_chief: bool) -> list[Any]:
    """`BackupAndRestore` on `backup_dir` when it is local; for a URL, on a local folder filled from the URL
    now and mirrored to it (by the chief) after each epoch's backup."""
    import tf_keras as keras

    if storage.is_local(backup_dir):
        return [keras.callbacks.BackupAndRestore(backup_dir=backup_dir)]
    local = scratch / "backup"
    if storage.download_dir(backup_dir, local):
        log.info("%s restoring the backup from %s", PROGRESS_MARK, backup_dir)

    class MirrorBackup(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if is_chief and local.is_dir():  # every worker restores from the chief's folder: `chief/`
                storage.mirror_dir(local, backup_dir, last=["chief/checkpoint"])

    return [keras.callbacks.BackupAndRestore(backup_dir=str(local)), MirrorBackup()]


class MetricsFile:
    """The chief's per-epoch JSON lines: appended in place at a local path; for a URL, appended to a local
    copy (filled from the URL first: a restarted worker keeps the earlier epochs' lines) that is uploaded
    whole after each line, one PUT, so a reader sees every finished epoch."""

    def __init__(self, uri: str, scratch: Path):
        self.uri = uri
        self.local = storage.local_path(uri) if storage.is_local(uri) else scratch / "metrics.jsonl"
        if not storage.is_local(uri) and storage.exists(uri):
            self.local.write_text(storage.read_text(uri))

    def append(self, record: dict[str, Any]) -> None:
        with open(self.local, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if not storage.is_local(self.uri):
            storage.write_text(self.uri, self.local.read_text())


def epoch_metrics(metrics: MetricsFile | None, epochs: int, task_id: int) -> Any:
    """A callback that logs each epoch; the chief also appends it as a JSON line (epochs are 1-based).

    Defined lazily: importing tf_keras at module import would touch TensorFlow before the strategy.
    """
    import tf_keras as keras

    class EpochMetrics(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            record = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
                      "epoch_seconds": round(time.monotonic() - self.started, 3)}
            shown = " ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("epoch", "epoch_seconds"))
            log.info("%s worker %d epoch %d/%d %s (%.1fs)", PROGRESS_MARK, task_id, epoch + 1, epochs, shown,
                     record["epoch_seconds"])
            if metrics:
                metrics.append(record)

    return EpochMetrics()
