"""`kiln predict PIPELINE DATA --out URL`: batch inference in this process (tasks.batch), with the version an
alias or a number names, the data read as ingest reads it and the predictions written as part files, a manifest
and `_SUCCESS`. The pipeline's `batch:` section gives the defaults; the options override them."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra.cli.console import AsJson, Home, bound_mlflow_retries, err, fail, out
from infra.stack.layout import StackError, kiln_home
from infra.stack.stack import Stack
from tasks.config import BatchConfig, PipelineConfig, load_config
from tasks.errors import BadInputError


def predict(
    pipeline: Annotated[str, typer.Argument(help="the pipeline's name (its YAML's `pipeline:`) or its YAML")],
    data: Annotated[str, typer.Argument(help="what to score: a file, folder, glob or image folder in any format "
                                             "ingest reads (a path or fsspec URL)")],
    out_url: Annotated[str, typer.Option("--out", help="the folder the predictions go to (path or fsspec URL)")],
    alias: Annotated[str | None, typer.Option(help="score with the version this MLflow alias names "
                                                   "(default: batch.alias, else champion)")] = None,
    version: Annotated[int | None, typer.Option(help="score with this version number instead", min=1)] = None,
    allow_unblessed: Annotated[str | None, typer.Option(
        "--allow-unblessed", metavar="REASON", help="score with a version that is not blessed; the reason is "
                                                    "recorded on the job's MLflow run")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace --out when it exists")] = False,
    output_format: Annotated[Literal["parquet", "csv"] | None, typer.Option(
        "--format", help="parquet (default) or csv")] = None,
    id_column: Annotated[str | None, typer.Option(help="an input column copied as the row key (default: file "
                                                       "and row number)")] = None,
    as_json: AsJson = False,
    home: Home = None,
) -> None:
    """Score a data set with a registered version, in-process, as the server would (blessed versions only)."""
    from tasks.batch import commit, job, scoring

    home_path = kiln_home(home)
    try:
        config = _config(pipeline, home_path)
        batch = _batch(config.batch, data, out_url, alias=alias, version=version, overwrite=overwrite,
                       output_format=output_format, id_column=id_column)
        ctx = _context(config, home_path)
    except (BadInputError, StackError) as exc:
        raise fail(str(exc)) from None
    bound_mlflow_retries()
    job_uri = None
    try:
        job_uri = job.plan(ctx, config, batch, allow_unblessed)
        planned = job.Job.read(job_uri)
        err.print(f"{planned.registered_model} v{planned.version}{f' (@{planned.alias})' if planned.alias else ''} "
                  f"scores {planned.data} ({len(planned.partitions)} partitions) into {planned.output}",
                  highlight=False, markup=False)
        with _progress() as progress:
            rows = progress.add_task("scoring", total=None, rate="")
            started = datetime.now(UTC)

            def advance(count: int) -> None:
                seconds = max((datetime.now(UTC) - started).total_seconds(), 1e-9)
                done = progress.tasks[0].completed + count
                progress.update(rows, advance=count, rate=f"{done / seconds:,.0f} rows/s")

            for shard in range(planned.shards):
                scoring.score_shard(job_uri, shard, on_rows=advance)
        summary = commit.commit(job_uri)
    except BadInputError as exc:
        commit.abandon(job_uri)
        raise fail(str(exc)) from None
    except Exception as exc:
        commit.abandon(job_uri)
        lines = str(exc).strip().splitlines()
        raise fail(f"{type(exc).__name__}: {lines[0] if lines else ''}", code=1) from None
    _report(summary, as_json)


def _config(pipeline: str, home: Path) -> PipelineConfig:
    from infra.airflow.pipelines import discover

    os.environ.setdefault("KILN_HOME", str(home))  # the YAML may say ${KILN_HOME}, as for `kiln run`
    if pipeline.endswith((".yaml", ".yml")) or Path(pipeline).is_file():
        return load_config(pipeline)
    paths = discover(home)
    if pipeline not in paths:
        raise BadInputError(f"no pipeline {pipeline!r}; pipelines are {', '.join(paths) or 'none'} (or give its YAML)")
    return load_config(paths[pipeline])


def _batch(section: BatchConfig | None, data: str, out_url: str, *, alias: str | None, version: int | None,
           overwrite: bool, output_format: str | None, id_column: str | None) -> BatchConfig:
    """The pipeline's batch section (or the defaults) with the command's data, output and options."""
    values = section.model_dump(exclude={"data", "output", "schedule"}) if section else {}
    values.update(data=_absolute(data), output=_absolute(out_url))
    if alias is not None:
        values.update(alias=alias, version=None)
    if version is not None:
        values["version"] = version
    values.update({name: value for name, value in (("overwrite", overwrite), ("output_format", output_format),
                                                   ("id_column", id_column)) if value})
    try:
        return BatchConfig.model_validate(values)
    except ValueError as exc:
        raise BadInputError(f"kiln predict: {str(exc).splitlines()[-1].strip()}") from None


def _absolute(location: str) -> str:
    return location if "://" in location else str(Path(location).expanduser().resolve())


def _context(config: PipelineConfig, home: Path) -> Any:
    from infra.airflow.deployment import deployment_from_env
    from tasks.snapshot import pipeline_context

    env = os.environ if os.environ.get("MLFLOW_TRACKING_URI") else Stack.load(home).env()
    deployment = deployment_from_env(env)
    tracking_uri = deployment.tracking_uri_for(config)
    if not tracking_uri:
        raise BadInputError(f"pipeline {config.pipeline}: no MLflow tracking URI (registry.tracking_uri, "
                            f"MLFLOW_TRACKING_URI or a running stack)")
    run_id = f"predict-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    return pipeline_context(config, deployment.artifact_root, run_id, tracking_uri, None, step="predict")


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f} rows"),
                    TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err, transient=True)


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"batch predictions of {summary['model']} v{summary['version']}", show_header=False)
    for key in ("data", "output", "rows", "files", "rows_per_second", "seconds", "artifact_sha256",
                "mlflow_run_id", "unblessed_reason"):
        value = summary.get(key)
        if value not in (None, "", []):
            table.add_row(key, f"{len(value)} files" if key == "files" else str(value))
    out.print(table)
