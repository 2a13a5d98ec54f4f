"""Commit a batch job: when every shard has moved its files into the output folder, write the manifest and
`_SUCCESS` (the marker Spark, Hadoop and Beam readers wait for) and close the job's MLflow run with its numbers.
A job with a shard that did not finish gets no `_SUCCESS`: its run is closed FAILED and the staging is removed.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from common import storage
from tasks.batch.job import MANIFEST, SUCCESS, TEMPORARY, BatchError, Job

log = logging.getLogger(__name__)


def commit(job_uri: str) -> dict[str, Any]:
    """The job's summary (also its manifest); BatchError when a shard did not finish."""
    from mlflow import MlflowClient

    job = Job.read(job_uri)
    client = MlflowClient(job.tracking_uri)
    shards = [_shard_stats(job, shard) for shard in range(job.shards)]
    unfinished = [shard for shard, stats in enumerate(shards) if stats is None]
    if unfinished:
        storage.remove(f"{job.output.rstrip('/')}/{TEMPORARY}")
        client.set_tag(job.mlflow_run_id, "kiln.unfinished_shards", ",".join(map(str, unfinished)))
        client.set_terminated(job.mlflow_run_id, "FAILED")
        raise BatchError(f"batch job into {job.output}: shard {', '.join(map(str, unfinished))} did not finish; the "
                         f"output is incomplete (no {SUCCESS})")
    done = [stats for stats in shards if stats is not None]
    rows = sum(s["rows"] for s in done)
    busy = sum(s["seconds"] for s in done)
    elapsed = (datetime.now(UTC) - datetime.fromisoformat(job.created)).total_seconds()
    summary = {"model": job.registered_model, "version": job.version, "alias": job.alias, "blessed": job.blessed,
               "unblessed_reason": job.unblessed_reason, "artifact_sha256": job.artifact_sha256, "data": job.data,
               "span": job.span, "output": job.output, "format": job.output_format, "rows": rows,
               "files": sorted(f for s in done for f in s["files"]), "shards": job.shards,
               "rows_per_second": round(rows / busy, 1) if busy else None, "seconds": round(elapsed, 1),
               "mlflow_run_id": job.mlflow_run_id, "created": job.created,
               "finished": datetime.now(UTC).isoformat(timespec="seconds")}
    text = json.dumps(summary, indent=1)
    storage.remove(f"{job.output.rstrip('/')}/{TEMPORARY}")  # the shards' emptied staging folders
    storage.write_text(f"{job.output.rstrip('/')}/{MANIFEST}", text)
    storage.write_text(f"{job.output.rstrip('/')}/{SUCCESS}", "")
    run = job.mlflow_run_id
    client.log_metric(run, "rows", rows)
    client.log_metric(run, "files", len(summary["files"]))
    if busy:
        client.log_metric(run, "rows_per_second", rows / busy)  # per shard-second: comparable across shard counts
    client.log_metric(run, "seconds", elapsed)
    client.log_text(run, text, "batch/manifest.json")
    client.set_terminated(run, "FINISHED")
    log.info("batch job done: %s rows into %s (%d files, %d shards, %.1fs)", f"{rows:,}", job.output,
             len(summary["files"]), job.shards, elapsed)
    return summary


def _shard_stats(job: Job, shard: int) -> dict[str, Any] | None:
    uri = f"{job.job_folder}/shard-{shard}.json"
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


def abandon(job_uri: str | None) -> None:
    """A job that stops before its commit (`kiln predict` failed): its staging removed, its MLflow run FAILED; never
    raises (the error that stopped the job is the one to report)."""
    if job_uri is None:
        return
    try:
        from mlflow import MlflowClient

        job = Job.read(job_uri)
        storage.remove(f"{job.output.rstrip('/')}/{TEMPORARY}")
        MlflowClient(job.tracking_uri).set_terminated(job.mlflow_run_id, "FAILED")
    except Exception as exc:  # noqa: BLE001 - cleanup after a failure must not hide it
        log.warning("could not close the batch job %s: %s", job_uri, exc)
