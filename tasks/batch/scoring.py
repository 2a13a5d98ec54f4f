"""Score one shard of a batch job: its partitions read with ingest's readers, batch by batch (bounded memory),
typed as the version's contract says, run through the version folder as the server runs it (tasks.served_artifact)
and written as one output file per partition.

A shard stages its files under `<output>/_temporary/shard-N/` and moves them into the output only when all of its
partitions are scored: a shard that fails leaves nothing behind, and its retry writes the same files again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from queue import Queue
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from common import storage
from common.digest import folder_digest
from tasks.batch.job import TEMPORARY, BatchError, Job
from tasks.data import values
from tasks.data.partitions import Partition, batches
from tasks.features import (
    MISSING_INT,
    FeatureSpec,
    LabelSpec,
    Preprocessing,
    column_arrays,
    image_shapes,
    parse_spec,
)
from tasks.models.assemble import PREDICTION, PROBABILITIES
from tasks.models.export import CLASS, CLASS_ID
from tasks.served_artifact import ServedModel

log = logging.getLogger(__name__)
MODEL_VERSION = "model_version"
PREFETCH = 2  # batches read ahead while the model runs


def score_shard(job_uri: str, shard: int, on_rows: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Score the shard's partitions; (rows, seconds) of it, also written beside the job for commit to add up."""
    job = Job.read(job_uri)
    if not 0 <= shard < job.shards:
        raise BatchError(f"shard {shard}: the job has shards 0 to {job.shards - 1}")
    staging = f"{job.output.rstrip('/')}/{TEMPORARY}/shard-{shard}"
    storage.remove(staging)  # an earlier try's files
    started = time.monotonic()
    rows, written = 0, []
    with tempfile.TemporaryDirectory(prefix="kiln-batch-") as tmp:
        model, contract = _load_version(job, Path(tmp))
        try:
            for index in job.shard_partitions(shard):
                scored, wrote = _score_partition(job, index, model, contract, f"{staging}/{job.part_name(index)}",
                                                 on_rows)
                rows += scored
                written += [job.part_name(index)] if wrote else []
        except BaseException:
            _drop(staging)
            raise
    for name in written:  # every file staged: now they become part of the output
        _move(f"{staging}/{name}", f"{job.output.rstrip('/')}/{name}")
    _drop(staging)
    seconds = time.monotonic() - started
    stats = {"shard": shard, "rows": rows, "seconds": round(seconds, 3), "files": written}
    storage.write_text(f"{job.job_folder}/shard-{shard}.json", json.dumps(stats))
    log.info("batch shard %d: %s rows in %.1fs (%.0f rows/s)", shard, f"{rows:,}", seconds, rows / max(seconds, 1e-9))
    return stats


def _load_version(job: Job, folder: Path) -> tuple[ServedModel, Preprocessing]:
    """The version's served folder from MLflow, checked against its registered digest, loaded once."""
    from mlflow import MlflowClient

    from tasks.model_registry import download_version

    downloaded = download_version(MlflowClient(job.tracking_uri), job.registered_model, job.version, folder)
    digest = folder_digest(downloaded.version_folder)
    if job.artifact_sha256 and digest != job.artifact_sha256:
        raise BatchError(f"{job.registered_model} v{job.version}: the downloaded folder has digest {digest[:12]}, "
                         f"the version was registered with {job.artifact_sha256[:12]}")
    if downloaded.contract is None:
        raise BatchError(f"{job.registered_model} v{job.version} has no contract")
    contract = Preprocessing.model_validate_json(downloaded.contract.read_text())
    return ServedModel(downloaded.version_folder), contract


def _score_partition(job: Job, index: int, model: ServedModel, contract: Preprocessing, target: str,
                     on_rows: Callable[[int], None] | None) -> tuple[int, bool]:
    """(rows scored, whether a file was written: a partition with no rows has none)."""
    offset = job.row_offsets[index]
    writer = PartWriter(target, job.output_format)
    rows = 0
    for inputs, keys in _prefetched(_model_batches(job.partition(index), contract, job)):
        table = prediction_table(keys(offset), model(inputs), contract.label, job.version, job.output_format)
        writer(table)
        rows += table.num_rows
        if on_rows is not None:
            on_rows(table.num_rows)
    return rows, writer.close()


def _model_batches(partition: Partition, contract: Preprocessing, job: Job) -> Iterator[tuple[dict[str, Any], Any]]:
    """(served inputs, a function of the partition's row offset giving the key columns) of each batch of rows."""
    features = contract.features
    columns = parse_spec(features, None)
    shapes = image_shapes(features)
    images_done = 0
    for batch in batches(partition, "batch"):
        for start in range(0, batch.num_rows, job.batch_rows):
            piece = {name: array.slice(start, job.batch_rows) for name, array in batch.columns.items()}
            first_row = batch.first_row + start
            typed = {name: values.typed(piece[name], kind, f"{partition.where} column {name!r}", first_row)
                     for name, kind in columns.items()}
            arrays = column_arrays(pa.RecordBatch.from_pydict(typed), columns, shapes)
            count = len(next(iter(piece.values())))
            if partition.format == "images":
                files = [file for file, _ in partition.images[images_done:images_done + count]]
                images_done += count
                yield served_inputs(arrays, features), _file_keys(job, files)
            else:
                yield served_inputs(arrays, features), _row_keys(job, partition, piece, first_row, count)


def _row_keys(job: Job, partition: Partition, piece: dict[str, pa.Array], first_row: int,
              count: int) -> Callable[[int], dict[str, pa.Array]]:
    def keys(offset: int) -> dict[str, pa.Array]:
        if job.id_column:
            return {job.id_column: piece[job.id_column]}
        found = {}
        if job.key_root is not None:
            found["file"] = pa.array([_relative(job.key_root, partition.source)] * count, pa.string())
        found["row"] = pa.array(np.arange(offset + first_row, offset + first_row + count, dtype=np.int64))
        return found

    return keys


def _file_keys(job: Job, files: list[str]) -> Callable[[int], dict[str, pa.Array]]:
    return lambda _offset: {"file": pa.array([_relative(job.key_root or "", f) for f in files], pa.string())}


def _relative(root: str, file: str) -> str:
    return file[len(root.rstrip("/")) + 1:] if root and file.startswith(root.rstrip("/") + "/") else file


def served_inputs(arrays: dict[str, Any], features: list[FeatureSpec]) -> dict[str, np.ndarray]:
    """Stored column arrays -> the served inputs, as a client sends them (the numpy twin of
    tasks.features.model_inputs, which the model was trained through)."""
    inputs = {}
    for feature in features:
        columns = [arrays[c] for c in feature.columns]
        if feature.kind in ("numeric", "vector"):
            floats = [_as_float(c) for c in columns]
            inputs[feature.name] = np.stack(floats, axis=1) if feature.kind == "vector" else floats[0]
        elif feature.kind == "boolean":
            inputs[feature.name] = columns[0] == 1
        elif feature.kind == "image":
            inputs[feature.name] = columns[0].astype(np.float32)
        elif feature.kind == "string":
            inputs[feature.name] = columns[0].astype(object)
        else:
            inputs[feature.name] = columns[0]
    return inputs


def _as_float(column: np.ndarray) -> np.ndarray:
    if column.dtype == np.int64:
        return np.where(column == MISSING_INT, np.nan, column).astype(np.float32)
    return column.astype(np.float32)


def prediction_table(keys: dict[str, pa.Array], outputs: dict[str, np.ndarray], label: LabelSpec, version: int,
                     output_format: str) -> pa.Table:
    """Key columns, the prediction columns of the task, and model_version."""
    columns: dict[str, pa.Array] = dict(keys)
    if label.task == "classification":
        classes = outputs[CLASS]
        columns[CLASS] = pa.array([c.decode() for c in classes] if classes.dtype == object else classes)
        columns[CLASS_ID] = pa.array(outputs[CLASS_ID].astype(np.int64))
        probabilities = np.asarray(outputs[PROBABILITIES], np.float32)
        if output_format == "csv":  # one column per class: a CSV cell holds one value
            for i, name in enumerate(label.classes or []):
                columns[f"probability_{name}"] = pa.array(probabilities[:, i])
        else:
            columns[PROBABILITIES] = pa.FixedSizeListArray.from_arrays(pa.array(probabilities.reshape(-1)),
                                                                       probabilities.shape[1])
    else:
        columns[PREDICTION] = pa.array(np.asarray(outputs[PREDICTION], np.float32))
    columns[MODEL_VERSION] = pa.array(np.full(len(next(iter(outputs.values()))), version, np.int64))
    return pa.table(columns)


class PartWriter:
    """Tables streamed into one Parquet or CSV file at `target` (a path or URL in the shard's staging folder, so a
    file cut short by a failure is removed with the folder); no file when no table came."""

    def __init__(self, target: str, output_format: str):
        self.target, self.output_format = target, output_format
        self._handle: Any = None
        self._writer: Any = None

    def __call__(self, table: pa.Table) -> None:
        if self._writer is None:
            self._handle = fsspec.open(self.target, "wb", auto_mkdir=True).open()
            self._writer = (pa_csv.CSVWriter(self._handle, table.schema) if self.output_format == "csv"
                            else pq.ParquetWriter(self._handle, table.schema, compression="zstd"))
        self._writer.write_table(table)

    def close(self) -> bool:
        """Finish the file; whether there is one."""
        if self._writer is None:
            return False
        self._writer.close()
        self._handle.close()
        return True


def _drop(staging: str) -> None:
    """The shard's staging folder removed, and `_temporary` too when no other shard stages there now."""
    storage.remove(staging)
    if storage.is_local(staging):
        with contextlib.suppress(OSError):  # another shard's files are still there
            storage.local_path(staging).parent.rmdir()


def _move(source: str, target: str) -> None:
    """A staged file moved into the output: a rename on a local disk; on object storage a server-side copy (the
    object appears whole) and a delete."""
    fs, source_path = fsspec.core.url_to_fs(source)
    _, target_path = fsspec.core.url_to_fs(target)
    if storage.is_local(source):
        Path(target_path).parent.mkdir(parents=True, exist_ok=True)
        os.replace(source_path, target_path)
    else:
        fs.mv(source_path, target_path)


def _prefetched(items: Iterator[Any]) -> Iterator[Any]:
    """The items, read PREFETCH ahead in a thread: reading and typing the next batch overlap the model's run
    (TensorFlow and LiteRT release the GIL). An error in the reader is raised here, in order."""
    queue: Queue[tuple[str, Any]] = Queue(maxsize=PREFETCH)
    stop = threading.Event()

    def read() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                queue.put(("item", item))
            queue.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            queue.put(("error", exc))

    reader = threading.Thread(target=read, name="kiln-batch-reader", daemon=True)
    reader.start()
    try:
        while True:
            kind, value = queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            while not queue.empty():
                queue.get_nowait()
            reader.join(timeout=0.05)
