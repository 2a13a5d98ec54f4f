"""One training worker process: `python -m tasks.training.worker --spec spec.json` with TF_CONFIG set.

Started by `tasks.training.launcher` — N local processes on loopback here, N pods on a fleet, same
entry point. MultiWorkerMirroredStrategy must exist before any other TensorFlow op, so it is created
first; everything else follows in its scope.

The spec's output paths are local paths (the local launcher: written in place, as ever) or URLs on object
storage (pods, which share nothing else; TensorFlow here cannot write `s3://`). For a URL the worker writes
locally and uploads with `common.storage`: a SavedModel to a local scratch folder, then uploaded with
`saved_model.pb` last; the chief's metrics appended to a local file that is uploaded whole after each epoch
(so the launcher and the step read progress and resumed epochs from the URL); the compress report with one
PUT; `initial_weights` read from the local cache. `BackupAndRestore` needs a file system TensorFlow can
write, so with a URL it backs up to a folder local to the process: every worker downloads the URL's backup
into it before `fit` (a restarted pod resumes from there) and the chief mirrors it to the URL after each
epoch, the checkpoint's index file last.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import storage
from tasks.features import Preprocessing
from tasks.training.launcher import CONTRACT_EXIT_CODE, LAUNCHER_PID_ENV, PROGRESS_MARK
from tasks.training.spec import CompressSpec, TrainSpec, WorkerSpec, WorkerSpecError, read_spec

log = logging.getLogger("kiln.train_worker")


def make_strategy() -> Any:
    """MWMS with NCCL all-reduce on GPUs, TF's own choice (ring) on CPUs."""
    import tensorflow as tf

    # Listing physical devices does not initialise the runtime, so it may precede the strategy.
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
                      else tf.distribute.experimental.CommunicationImplementation.AUTO)
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    # The strategy's coordination service installs TF's preemption notifier, a C++ SIGTERM handler
    # that only records the signal (for PreemptionCheckpointHandler, which kiln does not use), so a
    # worker would ignore the launcher's SIGTERM. BackupAndRestore is the recovery: exit at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return strategy


@dataclass(frozen=True)
class WorkerRun:
    """What a worker of either mode derives from the spec and the strategy's cluster."""

    preprocessing: Preprocessing
    num_workers: int
    task_id: int
    global_batch: int
    steps_per_epoch: int

    @property
    def is_chief(self) -> bool:
        return self.task_id == 0

    @classmethod
    def of(cls, strategy: Any, spec: WorkerSpec) -> WorkerRun:
        cluster = strategy.cluster_resolver.cluster_spec()
        num_workers = cluster.num_tasks("worker") if "worker" in cluster.jobs else 1
        global_batch = spec.train.batch_size * num_workers
        return cls(preprocessing=spec.preprocessing, num_workers=num_workers,
                   task_id=strategy.cluster_resolver.task_id or 0, global_batch=global_batch,
                   steps_per_epoch=max(1, math.ceil(spec.num_train / global_batch)))

    def export(self, model: Any, chief_target: str, scratch: Path, scratch_name: str) -> None:
        """Every worker must take part in saving (it runs collectives); only the chief's copy is kept: in
        place at a local `chief_target`, else uploaded there from `scratch` with `saved_model.pb` last (a
        reader takes a folder without it for no model; an earlier try's files go first)."""
        from tasks.models.export import export_saved_model

        in_place = self.is_chief and storage.is_local(chief_target)
        target = storage.local_path(chief_target) if in_place else scratch / scratch_name
        export_saved_model(model, self.preprocessing, target)
        if self.is_chief and not in_place:
            storage.remove(chief_target, first=["saved_model.pb"])
            storage.upload_dir(target, chief_target, last=["saved_model.pb"])
        if not in_place:
            shutil.rmtree(target, ignore_errors=True)


class Scratch:
    """This process's local folder for what TensorFlow writes: the spec's `scratch_dir` when it is local (the
    local launcher, unchanged), else a temp folder of its own (a pod's disk), removed at the end."""

    def __init__(self, scratch_dir: str):
        self.owned = not storage.is_local(scratch_dir)
        self.path = Path(tempfile.mkdtemp(prefix="kiln-worker-")) if self.owned else storage.local_path(scratch_dir)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


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


def local_checkpoint(prefix: str) -> str:
    """A checkpoint prefix (`.../variables/variables`) TensorFlow can read: as given when local, else in the
    local cache of its folder."""
    if storage.is_local(prefix):
        return prefix
    folder, name = prefix.rstrip("/").rsplit("/", 1)
    return str(storage.localize(folder) / name)


def train(spec: TrainSpec) -> None:
    strategy = make_strategy()  # first: TF_CONFIG is read and collectives are set up here

    import tf_keras as keras

    from tasks.features import dataset
    from tasks.models.assemble import build_model, compile_model

    run = WorkerRun.of(strategy, spec)
    config, preprocessing, task_id = spec.train, run.preprocessing, run.task_id
    num_workers, global_batch, steps_per_epoch = run.num_workers, run.global_batch, run.steps_per_epoch
    keras.utils.set_random_seed(config.seed)

    validation_steps = max(1, math.ceil(spec.num_eval / global_batch))
    features, label = preprocessing.features, preprocessing.label
    train_data = dataset(spec.train_files, features, label, global_batch, shuffle_seed=config.seed, repeat=True)
    eval_data = dataset(spec.eval_files, features, label, global_batch, shuffle_seed=None, repeat=True)

    with strategy.scope():
        model = build_model(preprocessing, spec.model, spec.hparams)
        compile_model(model, label, config.learning_rate)

    with Scratch(spec.scratch_dir) as scratch:
        # Callbacks run in list order: an epoch's metrics line is written before its backup, so a worker
        # killed in between repeats the epoch (read_metrics keeps its last record) instead of losing its line.
        metrics = MetricsFile(spec.metrics_path, scratch.path) if run.is_chief else None
        callbacks = [epoch_metrics(metrics, config.epochs, task_id),
                     *backup_callbacks(spec.backup_dir, scratch.path, run.is_chief)]
        log.info("%s worker %d/%d: %d epochs x %d steps, global batch %d, %s parameters", PROGRESS_MARK, task_id,
                 num_workers, config.epochs, steps_per_epoch, global_batch, f"{model.count_params():,}")
        model.fit(train_data, epochs=config.epochs, steps_per_epoch=steps_per_epoch, validation_data=eval_data,
                  validation_steps=validation_steps, callbacks=callbacks, verbose=0)

        run.export(model, spec.saved_model_dir, scratch.path, f"worker-{task_id}")
    log.info("%s worker %d done", PROGRESS_MARK, task_id)


def compress(spec: CompressSpec) -> None:
    """Fine-tune the trained model into the pruned, QAT and pruning-preserving QAT models it is asked for.

    Each fine-tune starts from the trained weights (pruned-QAT from the pruned model) and is exported
    with kiln's serving signature; one that tfmot cannot build is recorded as skipped with the reason.
    """
    strategy = make_strategy()

    from tasks.features import dataset
    from tasks.models.assemble import build_model

    run = WorkerRun.of(strategy, spec)
    preprocessing, task_id, global_batch = run.preprocessing, run.task_id, run.global_batch
    data = dataset(spec.train_files, preprocessing.features, preprocessing.label, global_batch,
                   shuffle_seed=spec.train.seed, repeat=True)
    with strategy.scope():
        trained = build_model(preprocessing, spec.model, spec.hparams)
    trained.load_weights(local_checkpoint(spec.initial_weights)).expect_partial()
    with Scratch(spec.scratch_dir) as scratch:
        report = fine_tune(spec, run, strategy, trained, data, scratch.path)
    if run.is_chief:
        storage.write_text(spec.report_path, json.dumps(report))
    log.info("%s worker %d done", PROGRESS_MARK, task_id)


def fine_tune(spec: CompressSpec, run: WorkerRun, strategy: Any, trained: Any, data: Any,
              scratch: Path) -> dict[str, Any]:
    """The fine-tunes of `compress`, each exported to its output; the report by fine-tune."""
    from tasks.compression import tuning
    from tasks.models.assemble import compile_model

    preprocessing, task_id, steps_per_epoch = run.preprocessing, run.task_id, run.steps_per_epoch
    epochs = spec.fine_tune_epochs
    report: dict[str, Any] = {}
    stripped = None
    for job in spec.fine_tunes:
        started = time.monotonic()
        try:
            with strategy.scope():
                if job == "pruned":
                    model = tuning.prune(trained, spec.target_sparsity, epochs * steps_per_epoch,
                                         spec.prune_skip)
                elif stripped is None and job == "pruned_qat":
                    raise tuning.VariantUnsupported(f"needs the pruned model: {report['pruned']['skipped']}")
                else:
                    model = tuning.quantize_aware(stripped if job == "pruned_qat" else trained,
                                                  preserve_sparsity=job == "pruned_qat")
                compile_model(model, preprocessing.label, spec.learning_rate)
            callbacks = tuning.pruning_callbacks() if job == "pruned" else []
            log.info("%s worker %d fine-tunes %s: %d epochs x %d steps", PROGRESS_MARK, task_id, job, epochs,
                     steps_per_epoch)
            model.fit(data, epochs=epochs, steps_per_epoch=steps_per_epoch, callbacks=callbacks, verbose=0)
            if job == "pruned":
                model = stripped = tuning.strip(model)
        except tuning.VariantUnsupported as exc:
            report[job] = {"skipped": str(exc)}
            log.info("%s worker %d: %s skipped: %s", PROGRESS_MARK, task_id, job, exc)
            continue
        run.export(model, spec.outputs[job], scratch, f"{job}-{task_id}")
        report[job] = {"seconds": round(time.monotonic() - started, 2)}
    return report


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


def die_with_launcher() -> None:
    """Ask Linux to SIGKILL this worker when the launcher dies, however it dies (SIGKILL included).

    The signal fires when the *thread* that started the worker exits; the launcher starts workers from
    the thread that then waits for them, so that thread outlives them. A launcher that died before this
    call is caught by comparing the parent pid with the one the launcher passed.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        print(f"train_worker: warning: prctl(PR_SET_PDEATHSIG) failed ({os.strerror(ctypes.get_errno())}); "
              f"this worker may outlive its launcher", file=sys.stderr, flush=True)
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if launcher and os.getppid() != int(launcher):
        print(f"train_worker: launcher {launcher} is gone; not starting", file=sys.stderr, flush=True)
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    die_with_launcher()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON file (path or URL) written by the launcher")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        spec = read_spec(args.spec)
    except WorkerSpecError as exc:
        print(f"train_worker: {exc}", file=sys.stderr)
        return 2
    from tasks.models.contract import ModelContractError

    try:
        compress(spec) if isinstance(spec, CompressSpec) else train(spec)
    except ModelContractError as exc:
        print(f"train_worker: {exc}", file=sys.stderr, flush=True)
        return CONTRACT_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
