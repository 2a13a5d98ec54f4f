"""Compress mode of the training worker: fine-tune the trained model into the pruned, QAT and pruning-preserving
QAT models the optimize step asks for.

Each fine-tune starts from the trained weights (pruned-QAT from the pruned model) and is exported with kiln's
serving signature; one that tfmot cannot build is recorded as skipped with the reason. With URLs (pods), the
trained weights are read from the local download cache, each SavedModel is uploaded with `saved_model.pb` last
and the chief's report goes up with one PUT.

TensorFlow, tf_keras and tfmot are imported inside the functions: `tasks.training.worker` imports this module
before it creates the strategy, which must come before any other TensorFlow op.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from common import storage
from tasks.training.launcher import PROGRESS_MARK
from tasks.training.spec import CompressSpec
from tasks.training.worker_run import Scratch, WorkerRun, log


def compress(spec: CompressSpec, run: WorkerRun) -> None:
    from tasks.features import dataset
    from tasks.models.assemble import build_model

    preprocessing, global_batch = run.preprocessing, run.global_batch
    data = dataset(spec.train_files, preprocessing.features, preprocessing.label, global_batch,
                   shuffle_seed=spec.train.seed, repeat=True, memory_budget=spec.memory_budget)
    with run.strategy.scope():
        trained = build_model(preprocessing, spec.model, spec.hparams)
    trained.load_weights(local_checkpoint(spec.initial_weights)).expect_partial()
    with Scratch(spec.scratch_dir) as scratch:
        report = fine_tune(spec, run, trained, data, scratch.path)
    if run.is_chief:
        storage.write_text(spec.report_path, json.dumps(report))
    log.info("%s worker %d done", PROGRESS_MARK, run.task_id)


def fine_tune(spec: CompressSpec, run: WorkerRun, trained: Any, data: Any, scratch: Path) -> dict[str, Any]:
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
            with run.strategy.scope():
                if job == "pruned":
                    model = tuning.prune(trained, spec.target_sparsity, epochs * steps_per_epoch, spec.prune_skip)
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


def local_checkpoint(prefix: str) -> str:
    """A checkpoint prefix (`.../variables/variables`) TensorFlow can read: as given when local, else in the
    local cache of its folder."""
    if storage.is_local(prefix):
        return prefix
    folder, name = prefix.rstrip("/").rsplit("/", 1)
    return str(storage.localize(folder) / name)
