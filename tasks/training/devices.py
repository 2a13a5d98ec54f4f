"""Which devices each training worker gets, decided by the launcher before any worker starts.

`train.strategy`:
* `multi_worker`: `train.num_workers` processes (MultiWorkerMirroredStrategy), each with `train.gpus_per_worker`
  GPUs of its own (a slice of the visible GPUs in CUDA_VISIBLE_DEVICES, so no two workers claim the same device:
  NCCL refuses duplicates), or all visible GPUs split evenly when it is not set; on a machine without GPUs, CPU.
* `mirrored`: one process over its local GPUs (MirroredStrategy, NCCL all-reduce between them).
* `auto`: `multi_worker` for more than one worker, `mirrored` for one worker on a machine with several GPUs, else
  one `multi_worker` process (the CPU default).

The visible GPUs are CUDA_VISIBLE_DEVICES when it is set (as a scheduler or a pod sets it), else what
`nvidia-smi -L` lists; the launcher never imports TensorFlow to find them. On CPU, KILN_CPU_REPLICAS=N splits the
CPU of a mirrored worker into N logical devices (tf.config.set_logical_device_configuration): how the mirrored
path is tested on machines without GPUs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

from tasks.config import TrainConfig
from tasks.errors import BadInputError

STRATEGY_ENV = "KILN_TRAIN_STRATEGY"  # the strategy the launcher chose, read by each worker
CPU_REPLICAS_ENV = "KILN_CPU_REPLICAS"
Strategy = Literal["mirrored", "multi_worker"]


class DeviceError(BadInputError):
    """The devices asked for are not on this machine; one line."""


@dataclass(frozen=True)
class DevicePlan:
    strategy: Strategy
    devices: list[str | None]  # per worker: its CUDA_VISIBLE_DEVICES, or None to pass the launcher's through

    @property
    def workers(self) -> int:
        return len(self.devices)

    def env(self, index: int) -> dict[str, str]:
        chosen = self.devices[index]
        return {STRATEGY_ENV: self.strategy, **({"CUDA_VISIBLE_DEVICES": chosen} if chosen is not None else {})}


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else nvidia-smi's list, else none."""
    env = dict(os.environ) if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [d.strip() for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


def plan_devices(train: TrainConfig, gpus: list[str], num_workers: int | None = None) -> DevicePlan:
    """The strategy and each worker's GPUs for `num_workers` workers (default: train.num_workers)."""
    workers = num_workers or train.num_workers
    strategy = train.strategy
    if strategy == "auto":
        strategy = "mirrored" if workers == 1 and len(gpus) > 1 else "multi_worker"
    if strategy == "mirrored":
        if workers > 1:
            raise DeviceError(f"train.strategy mirrored is one worker; {workers} workers need multi_worker")
        wanted = train.gpus_per_worker or len(gpus)
        _check(wanted, 1, gpus)
        return DevicePlan("mirrored", [",".join(gpus[:wanted]) if gpus else None])
    if not gpus:
        if train.gpus_per_worker:
            _check(train.gpus_per_worker, workers, gpus)
        return DevicePlan("multi_worker", [None] * workers)
    per = train.gpus_per_worker or max(1, len(gpus) // workers)
    _check(per, workers, gpus)
    return DevicePlan("multi_worker", [",".join(gpus[i * per:(i + 1) * per]) for i in range(workers)])


def _check(per_worker: int, workers: int, gpus: list[str]) -> None:
    if per_worker * workers > len(gpus):
        have = f"{len(gpus)} ({','.join(gpus)})" if gpus else "none"
        raise DeviceError(f"train.gpus_per_worker {per_worker} x {workers} worker(s) needs {per_worker * workers} "
                          f"GPUs; this machine has {have} visible")
