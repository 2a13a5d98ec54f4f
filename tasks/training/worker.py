"""One training worker process: `python -m tasks.training.worker --spec spec.json` with TF_CONFIG set.

Started by `tasks.training.launcher` — N local processes on loopback here, N pods on a fleet, same
entry point. The spec (`tasks.training.spec`) says the mode: train a model (`tasks.training.worker_train`)
or fine-tune a trained one into compressed variants (`tasks.training.worker_compress`).
MultiWorkerMirroredStrategy must exist before any other TensorFlow op, so it is created first and every
module imported before it keeps its TensorFlow imports inside functions.

The spec's output paths are local paths (the local launcher: written in place, as ever) or URLs on object
storage (pods, which share nothing else; TensorFlow here cannot write `s3://`). For a URL the worker writes
locally and uploads with `common.storage`: a SavedModel is exported to a local scratch folder, then uploaded
with `saved_model.pb` last (`tasks.training.worker_run`); each mode says how it handles the rest.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from tasks.models.contract import ModelContractError
from tasks.training.devices import CPU_REPLICAS_ENV, STRATEGY_ENV
from tasks.training.launcher import CONTRACT_EXIT_CODE, LAUNCHER_PID_ENV
from tasks.training.spec import CompressSpec, TrainSpec, WorkerSpec, WorkerSpecError, read_spec
from tasks.training.worker_compress import compress
from tasks.training.worker_run import WorkerRun
from tasks.training.worker_train import train

SPEC_ERROR_EXIT_CODE = 2  # as argparse exits on bad arguments: the worker was started wrong


def make_strategy() -> Any:
    """The strategy the launcher chose (KILN_TRAIN_STRATEGY): MultiWorkerMirroredStrategy across the workers (NCCL
    all-reduce on GPUs, TF's own choice on CPUs), or MirroredStrategy over this worker's local devices."""
    import tensorflow as tf

    # Listing physical devices does not initialise the runtime, so it may precede the strategy.
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if os.environ.get(STRATEGY_ENV) == "mirrored":
        return _mirrored(tf, gpus)
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
                      else tf.distribute.experimental.CommunicationImplementation.AUTO)
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    # The strategy's coordination service installs TF's preemption notifier, a C++ SIGTERM handler
    # that only records the signal (for PreemptionCheckpointHandler, which kiln does not use), so a
    # worker would ignore the launcher's SIGTERM. BackupAndRestore is the recovery: exit at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return strategy


def _mirrored(tf: Any, gpus: list[Any]) -> Any:
    """MirroredStrategy over the visible GPUs (NCCL between them); on CPU over KILN_CPU_REPLICAS logical devices."""
    if gpus:
        return tf.distribute.MirroredStrategy()
    replicas = int(os.environ.get(CPU_REPLICAS_ENV) or 1)
    if replicas > 1:
        [cpu] = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    devices = [f"/cpu:{i}" for i in range(replicas)]
    return tf.distribute.MirroredStrategy(devices=devices,
                                          cross_device_ops=tf.distribute.ReductionToOneDevice("/cpu:0"))


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


def run_worker(spec: WorkerSpec) -> None:
    strategy = make_strategy()  # first: TF_CONFIG is read and collectives are set up here
    worker = WorkerRun.of(strategy, spec)
    match spec:
        case TrainSpec():
            train(spec, worker)
        case CompressSpec():
            compress(spec, worker)


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
        return SPEC_ERROR_EXIT_CODE
    try:
        run_worker(spec)
    except ModelContractError as exc:
        print(f"train_worker: {exc}", file=sys.stderr, flush=True)
        return CONTRACT_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
