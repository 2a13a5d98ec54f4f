"""One training worker process: `python -m tasks.training.worker --spec spec.json` with TF_CONFIG set.

Started by `tasks.training.launcher` — N local processes on loopback here, N pods on a fleet, same
entry point. MultiWorkerMirroredStrategy must exist before any other TensorFlow op, so it is created
first; everything else follows in its scope.
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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tasks.training.launcher import CONTRACT_EXIT_CODE, LAUNCHER_PID_ENV, PROGRESS_MARK  # noqa: E402

log = logging.getLogger("kiln.train_worker")

COMMON_KEYS = ("train_files", "eval_files", "num_train", "num_eval", "preprocessing", "model", "hparams", "train",
               "scratch_dir")
SPEC_KEYS = {  # by mode: train a model from scratch, or fine-tune a trained one into compressed variants
    "train": (*COMMON_KEYS, "saved_model_dir", "metrics_path", "backup_dir"),
    "compress": (*COMMON_KEYS, "initial_weights", "fine_tunes", "fine_tune_epochs", "learning_rate",
                 "target_sparsity", "prune_skip", "outputs", "report_path"),
}


class WorkerSpecError(ValueError):
    """The spec file the launcher wrote is unusable."""


def load_spec(path: str) -> dict[str, Any]:
    """The spec at a local path or any fsspec URL (pods on Kubernetes read it from object storage)."""
    import fsspec

    try:
        with fsspec.open(path, "r") as fh:
            spec = json.loads(fh.read())
    except (OSError, ValueError, ImportError) as exc:  # ValueError: bad JSON or an unknown protocol
        raise WorkerSpecError(f"cannot read worker spec {path}: {exc}") from None
    mode = spec.get("mode", "train")
    if mode not in SPEC_KEYS:
        raise WorkerSpecError(f"worker spec {path}: unknown mode {mode!r}")
    missing = [k for k in SPEC_KEYS[mode] if k not in spec]
    if missing:
        raise WorkerSpecError(f"worker spec {path} lacks {', '.join(missing)}")
    return spec


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

    config: Any  # tasks.config.TrainConfig
    preprocessing: Any  # tasks.features.Preprocessing
    num_workers: int
    task_id: int
    global_batch: int
    steps_per_epoch: int

    @property
    def is_chief(self) -> bool:
        return self.task_id == 0

    @classmethod
    def of(cls, strategy: Any, spec: dict[str, Any]) -> WorkerRun:
        from tasks.config import TrainConfig
        from tasks.features import Preprocessing

        config = TrainConfig.model_validate(spec["train"])
        cluster = strategy.cluster_resolver.cluster_spec()
        num_workers = cluster.num_tasks("worker") if "worker" in cluster.jobs else 1
        global_batch = config.batch_size * num_workers
        return cls(config=config, preprocessing=Preprocessing.model_validate(spec["preprocessing"]),
                   num_workers=num_workers, task_id=strategy.cluster_resolver.task_id or 0,
                   global_batch=global_batch, steps_per_epoch=max(1, math.ceil(spec["num_train"] / global_batch)))

    def export(self, model: Any, chief_target: str, scratch_dir: str, scratch_name: str) -> None:
        """Every worker must take part in saving (it runs collectives); only the chief's copy is kept."""
        from tasks.models.export import export_saved_model

        target = Path(chief_target) if self.is_chief else Path(scratch_dir) / scratch_name
        export_saved_model(model, self.preprocessing, target)
        if not self.is_chief:
            shutil.rmtree(target, ignore_errors=True)


def train(spec: dict[str, Any]) -> None:
    strategy = make_strategy()  # first: TF_CONFIG is read and collectives are set up here

    import tf_keras as keras

    from tasks.features import dataset
    from tasks.models.assemble import build_model, compile_model

    run = WorkerRun.of(strategy, spec)
    config, preprocessing, task_id = run.config, run.preprocessing, run.task_id
    num_workers, global_batch, steps_per_epoch = run.num_workers, run.global_batch, run.steps_per_epoch
    keras.utils.set_random_seed(config.seed)

    validation_steps = max(1, math.ceil(spec["num_eval"] / global_batch))
    features, label = preprocessing.features, preprocessing.label
    train_data = dataset(spec["train_files"], features, label, global_batch, shuffle_seed=config.seed, repeat=True)
    eval_data = dataset(spec["eval_files"], features, label, global_batch, shuffle_seed=None, repeat=True)

    with strategy.scope():
        model = build_model(preprocessing, spec["model"], spec["hparams"])
        compile_model(model, label, config.learning_rate)

    # Callbacks run in list order: an epoch's metrics line is written before its backup, so a worker
    # killed in between repeats the epoch (read_metrics keeps its last record) instead of losing its line.
    callbacks = [epoch_metrics(spec["metrics_path"] if run.is_chief else None, config.epochs, task_id),
                 keras.callbacks.BackupAndRestore(backup_dir=spec["backup_dir"])]
    log.info("%s worker %d/%d: %d epochs x %d steps, global batch %d, %s parameters", PROGRESS_MARK, task_id,
             num_workers, config.epochs, steps_per_epoch, global_batch, f"{model.count_params():,}")
    model.fit(train_data, epochs=config.epochs, steps_per_epoch=steps_per_epoch, validation_data=eval_data,
              validation_steps=validation_steps, callbacks=callbacks, verbose=0)

    run.export(model, spec["saved_model_dir"], spec["scratch_dir"], f"worker-{task_id}")
    log.info("%s worker %d done", PROGRESS_MARK, task_id)


def compress(spec: dict[str, Any]) -> None:
    """Fine-tune the trained model into the pruned, QAT and pruning-preserving QAT models it is asked for.

    Each fine-tune starts from the trained weights (pruned-QAT from the pruned model) and is exported
    with kiln's serving signature; one that tfmot cannot build is recorded as skipped with the reason.
    """
    strategy = make_strategy()

    from tasks.compression import tuning
    from tasks.features import dataset
    from tasks.models.assemble import build_model, compile_model

    run = WorkerRun.of(strategy, spec)
    config, preprocessing, task_id = run.config, run.preprocessing, run.task_id
    global_batch, steps_per_epoch = run.global_batch, run.steps_per_epoch
    epochs = spec["fine_tune_epochs"]
    data = dataset(spec["train_files"], preprocessing.features, preprocessing.label, global_batch,
                   shuffle_seed=config.seed, repeat=True)
    with strategy.scope():
        trained = build_model(preprocessing, spec["model"], spec["hparams"])
    trained.load_weights(spec["initial_weights"]).expect_partial()
    report: dict[str, Any] = {}
    stripped = None
    for job in spec["fine_tunes"]:
        started = time.monotonic()
        try:
            with strategy.scope():
                if job == "pruned":
                    model = tuning.prune(trained, spec["target_sparsity"], epochs * steps_per_epoch,
                                         spec["prune_skip"])
                elif stripped is None and job == "pruned_qat":
                    raise tuning.VariantUnsupported(f"needs the pruned model: {report['pruned']['skipped']}")
                else:
                    model = tuning.quantize_aware(stripped if job == "pruned_qat" else trained,
                                                  preserve_sparsity=job == "pruned_qat")
                compile_model(model, preprocessing.label, spec["learning_rate"])
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
        run.export(model, spec["outputs"][job], spec["scratch_dir"], f"{job}-{task_id}")
        report[job] = {"seconds": round(time.monotonic() - started, 2)}
    if run.is_chief:
        Path(spec["report_path"]).write_text(json.dumps(report))
    log.info("%s worker %d done", PROGRESS_MARK, task_id)


def epoch_metrics(path: str | None, epochs: int, task_id: int) -> Any:
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
            if path:
                with open(path, "a") as fh:
                    fh.write(json.dumps(record) + "\n")

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
        spec = load_spec(args.spec)
    except WorkerSpecError as exc:
        print(f"train_worker: {exc}", file=sys.stderr)
        return 2
    from tasks.models.contract import ModelContractError

    try:
        compress(spec) if spec.get("mode") == "compress" else train(spec)
    except ModelContractError as exc:
        print(f"train_worker: {exc}", file=sys.stderr, flush=True)
        return CONTRACT_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
