"""The batch job: which version scores which data into which folder, decided once by `plan` and written as
`job.json` beside the run's artifacts, so shard tasks on any worker read the same decision (XCom carries its URI).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict

from common import storage
from tasks import tracking
from tasks.config import BatchConfig, PipelineConfig
from tasks.context import StepContext
from tasks.data import images, partitions
from tasks.data.readers import DataError
from tasks.errors import BadInputError
from tasks.features import Preprocessing
from tasks.model_registry import (
    BLESSED_TAG,
    CONTRACT_ARTIFACT_PATH,
    CONTRACT_FILE,
    DIGEST_TAG,
    aliases,
    version_contract,
)
from tasks.spans import is_spanned, span_file

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
TEMPORARY = "_temporary"  # staged output of running shards (Hadoop's committer's name); readers skip `_` names
SUCCESS = "_SUCCESS"
MANIFEST = "_kiln_batch.json"


class BatchError(BadInputError):
    """A batch job that cannot run as asked (version, data, output); one line naming the thing at fault."""


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    pipeline: str
    registered_model: str
    version: int
    alias: str | None  # the alias the version was found by (None: asked by number)
    blessed: bool
    unblessed_reason: str | None
    artifact_sha256: str  # the version's registered digest: a shard refuses a download that differs
    data: str
    format: str | None
    span: int | None
    output: str
    output_format: str
    id_column: str | None
    batch_rows: int
    shards: int
    partitions: list[dict[str, Any]]  # tasks.data.partitions.Partition fields
    row_offsets: list[int]  # per partition: the rows of its file before it (row keys are 1-based per file)
    key_root: str | None  # the folder `file` keys are relative to (None: one table file, keys are rows only)
    mlflow_run_id: str
    tracking_uri: str
    job_folder: str
    created: str

    def partition(self, index: int) -> partitions.Partition:
        fields = dict(self.partitions[index])
        fields["row_groups"] = tuple(fields["row_groups"])
        fields["images"] = tuple(tuple(pair) for pair in fields["images"])
        fields["image_shape"] = tuple(fields["image_shape"]) if fields["image_shape"] else None
        return partitions.Partition(**fields)

    def shard_partitions(self, shard: int) -> list[int]:
        return list(range(shard, len(self.partitions), self.shards))

    def part_name(self, index: int) -> str:
        return f"part-{index:05d}.{'csv' if self.output_format == 'csv' else 'parquet'}"

    @classmethod
    def read(cls, uri: str) -> Job:
        return cls.model_validate_json(storage.read_text(uri))


def job_folder(ctx: StepContext) -> str:
    return "/".join([ctx.artifact_root.rstrip("/"), ctx.pipeline, "batch", _safe(ctx.run_id)])


def plan(ctx: StepContext, config: PipelineConfig, batch: BatchConfig, unblessed_reason: str | None = None) -> str:
    """Decide the job and open its MLflow run; the URI of job.json. Nothing is written to the output yet."""
    client = tracking.client(ctx)
    name = config.registered_model_name
    version, alias = _version(client, name, batch)
    tags = client.get_model_version(name, str(version)).tags
    blessed = tags.get(BLESSED_TAG) == "true"
    if not blessed and not unblessed_reason:
        raise BatchError(f"{name} v{version} is not blessed ({tags.get('kiln.failed_check') or 'no blessing recorded'}"
                         f"); score with it anyway only with a reason (--allow-unblessed REASON)")
    data, span = (span_file(batch.data) if is_spanned(batch.data) else (batch.data, None))
    output = _output(batch.output, ctx.run_id, span)
    replaced = _check_output(output, batch.overwrite)
    contract = _contract(client, name, version)
    shape = next((tuple(f.image_shape) for f in contract.features if f.kind == "image" and f.image_shape), None)
    planned = _partitions(data, batch.format, int(batch.partition_bytes), shape)
    _check_columns(planned[0], contract, batch.id_column)
    files = sorted({p.source for p in planned if p.format != "images"})
    key_root = data.rstrip("/") if planned[0].format == "images" else (_common_folder(files) if len(files) > 1 else None)
    if replaced:  # only now that the job can run: a refused job leaves the old output as it was
        storage.remove(output)
    run_id = _open_run(client, ctx, name, version, data, output, unblessed_reason if not blessed else None)
    folder = job_folder(ctx)
    storage.remove(folder)  # an earlier plan of this run: its shards' records must not count for this one
    job = Job(pipeline=ctx.pipeline, registered_model=name, version=version, alias=alias, blessed=blessed,
              unblessed_reason=unblessed_reason if not blessed else None, artifact_sha256=tags.get(DIGEST_TAG, ""),
              data=data, format=batch.format, span=span, output=output, output_format=batch.output_format,
              id_column=batch.id_column, batch_rows=batch.batch_rows, shards=min(batch.shards, len(planned)),
              partitions=[asdict(p) for p in planned], row_offsets=_row_offsets(planned), key_root=key_root,
              mlflow_run_id=run_id, tracking_uri=ctx.require_tracking_uri(), job_folder=folder,
              created=datetime.now(UTC).isoformat(timespec="seconds"))
    uri = f"{folder}/{JOB_FILE}"
    storage.write_text(uri, job.model_dump_json(indent=1))
    log.info("batch job: %s v%s%s scores %s (%d partitions, %d shards) into %s", name, version,
             f" (@{alias})" if alias else "", data, len(planned), job.shards, output)
    return uri


def _version(client: MlflowClient, name: str, batch: BatchConfig) -> tuple[int, str | None]:
    from mlflow.exceptions import MlflowException

    if batch.version is not None:
        try:
            client.get_model_version(name, str(batch.version))
        except MlflowException:
            raise BatchError(f"{name} has no version {batch.version}") from None
        return batch.version, None
    found = aliases(client, name)
    if batch.alias not in found:
        have = ", ".join(f"@{a} v{v}" for a, v in sorted(found.items())) or "none"
        raise BatchError(f"{name} has no alias @{batch.alias} (aliases: {have}); pass --version N or another --alias")
    return found[batch.alias], batch.alias


def _output(template: str, run_id: str, span: int | None) -> str:
    if "{span}" in template and span is None:
        raise BatchError(f"batch.output {template!r} says {{span}}, but the data has no spans")
    return (template.replace("{date}", datetime.now(UTC).strftime("%Y-%m-%d")).replace("{run}", _safe(run_id))
            .replace("{span}", str(span)))


def _check_output(output: str, overwrite: bool) -> bool:
    """Whether an output folder is there to be replaced (overwrite, Spark's overwrite mode); refused without it."""
    fs, path = fsspec.core.url_to_fs(output)
    if not fs.exists(path):
        return False
    if fs.isfile(path):
        raise BatchError(f"output {output} is a file; batch predictions go to a folder")
    if not overwrite:
        raise BatchError(f"output {output} exists; pass --overwrite (batch.overwrite: true) to replace it")
    return True


def _contract(client: MlflowClient, name: str, version: int) -> Preprocessing:
    text = version_contract(client, name, version)
    if text is None:
        raise BatchError(f"{name} v{version} has no {CONTRACT_ARTIFACT_PATH}/{CONTRACT_FILE} (registered before kiln "
                         f"logged its served features): it cannot read raw data")
    return Preprocessing.model_validate_json(text)


def _partitions(data: str, format: str | None, partition_bytes: int,
                shape: images.Shape | None) -> list[partitions.Partition]:
    files = partitions.source_files(data)
    if not partitions.is_image_folder(files, format):
        return partitions.plan(data, format, partition_bytes=partition_bytes)
    if shape is None:
        raise BatchError(f"{data} is an image folder, but the model takes no image")
    found = [f for f in files if images.is_image(f)]  # unlabelled: images anywhere below the folder
    fs, path = fsspec.core.url_to_fs(data)
    count = max(1, min(len(found), -(-fs.du(path) // partition_bytes)))
    per = -(-len(found) // count)
    chunks = [found[start:start + per] for start in range(0, len(found), per)]
    return [partitions.Partition(data, "images", i, len(chunks), images=tuple((f, "") for f in chunk),
                                 image_shape=shape) for i, chunk in enumerate(chunks)]


def _check_columns(first: partitions.Partition, contract: Preprocessing, id_column: str | None) -> None:
    names = images.COLUMNS if first.format == "images" else partitions.header(first.source, first.format)
    needed = [c for f in contract.features for c in f.columns] + ([id_column] if id_column else [])
    missing = [c for c in needed if c not in names]
    if missing:
        role = "id column" if missing[0] == id_column else "column the model takes"
        raise DataError(f"{first.source}: no {role} {missing[0]!r} (it has {', '.join(names[:12])}"
                        f"{', ...' if len(names) > 12 else ''})")


def _row_offsets(planned: list[partitions.Partition]) -> list[int]:
    """The rows of each partition's file that come before it: row keys count from the file's first row."""
    offsets: list[int] = []
    images_before = 0
    for partition in planned:
        if partition.format == "images":
            offsets.append(images_before)
            images_before += len(partition.images)
        elif partition.row_groups:
            with fsspec.open(partition.source, "rb") as handle:
                metadata = pq.ParquetFile(handle).metadata
                offsets.append(sum(metadata.row_group(i).num_rows for i in range(partition.row_groups[0])))
        elif partition.whole or partition.start == 0:
            offsets.append(0)
        else:  # a byte range: the lines before it, less the CSV header
            offsets.append(_lines_before(partition.source, partition.start - 1) + 1 - (partition.format == "csv"))
    return offsets


def _lines_before(source: str, end: int) -> int:
    lines, read = 0, 0
    with fsspec.open(source, "rb") as handle:
        while read < end:
            chunk = handle.read(min(8 << 20, end - read))
            if not chunk:
                break
            lines += chunk.count(b"\n")
            read += len(chunk)
    return lines


def _common_folder(files: list[str]) -> str:
    local = [f for f in files if "://" not in f]
    if len(local) == len(files):
        return os.path.commonpath(files)
    protocol = files[0].split("://", 1)[0]
    return f"{protocol}://" + os.path.commonpath([f.split("://", 1)[1] for f in files])


def _open_run(client: MlflowClient, ctx: StepContext, name: str, version: int, data: str, output: str,
              unblessed_reason: str | None) -> str:
    experiment = tracking.experiment_id(client, ctx.experiment)
    tags = {"kiln.role": "batch", tracking.PIPELINE_TAG: ctx.pipeline, tracking.RUN_ID_TAG: ctx.run_id,
            "kiln.registered_model": name, "kiln.model_version": str(version), "kiln.batch_data": data,
            "kiln.batch_output": output, "mlflow.runName": f"batch {ctx.pipeline} v{version}"}
    if unblessed_reason:
        tags["kiln.unblessed_reason"] = unblessed_reason[:5000]
    return client.create_run(experiment, tags=tags).info.run_id


def _safe(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", run_id)
