"""What a training worker of either mode shares: its place in the group (`WorkerRun`), the export every worker
takes part in and only the chief keeps, and the local folder TensorFlow writes to (`Scratch`).

Nothing here imports TensorFlow at module level: `tasks.training.worker` imports this before it creates the
strategy, which must come before any other TensorFlow op.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import storage
from tasks.features import Preprocessing
from tasks.training.spec import WorkerSpec

log = logging.getLogger("kiln.train_worker")


@dataclass(frozen=True)
class WorkerRun:
    """What a worker of either mode derives from the spec and the strategy's cluster."""

    strategy: Any  # tf.distribute.MultiWorkerMirroredStrategy or MirroredStrategy
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
        """A MultiWorkerMirroredStrategy's place in its cluster; a MirroredStrategy is one worker, task 0. The global
        batch is train.batch_size per replica: x every GPU (or worker CPU) in sync."""
        resolver = getattr(strategy, "cluster_resolver", None)
        cluster = resolver.cluster_spec() if resolver is not None else None
        num_workers = cluster.num_tasks("worker") if cluster is not None and "worker" in cluster.jobs else 1
        global_batch = spec.train.batch_size * strategy.num_replicas_in_sync
        return cls(strategy=strategy, preprocessing=spec.preprocessing, num_workers=num_workers,
                   task_id=(resolver.task_id or 0) if resolver is not None else 0, global_batch=global_batch,
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
