"""The `kiln` command: pipelines from a CSV (init), runs on the embedded stack (up/run/status/down), demos,
serving by the registry (promote/rollback/sync) and a run's approval (approve/reject)."""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table
from rich.text import Text

from infra.airflow.pipelines import SHIPPED
from infra.cli.airflow_api import AirflowApiError
from infra.cli.approval_commands import register as register_approval_commands
from infra.cli.cache_commands import cache_app
from infra.cli.console import AsJson, Home, err, fail, out, say
from infra.cli.data_commands import data_app
from infra.cli.demo_data import DATASETS
from infra.cli.predict_command import predict
from infra.cli.reports import print_pipelines, print_task, report_run, services_table
from infra.cli.serving_commands import register as register_serving_commands
from infra.stack.layout import StackError, StackPorts, kiln_home
from infra.stack.stack import Stack
from tasks.config import PipelineConfig, load_config
from tasks.errors import BadInputError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

DEFAULT_CONFIG = SHIPPED / "digits.yaml"
Port = Annotated[int | None, typer.Option(min=1, max=65535)]
Params = Annotated[list[str] | None, typer.Option("--param", "-p", help="override, e.g. epochs=3 (see `kiln steps`)")]


def _stack(home: Path | None, airflow_port: int | None, mlflow_port: int | None, rest_port: int | None,
           grpc_port: int | None) -> Stack:
    ports = StackPorts.from_env(airflow=airflow_port, mlflow=mlflow_port, serving_rest=rest_port,
                                serving_grpc=grpc_port)
    return Stack(kiln_home(home), ports)


@app.command()
def up(home: Home = None, airflow_port: Port = None, mlflow_port: Port = None, rest_port: Port = None,
       grpc_port: Port = None,
       profile: Annotated[str, typer.Option("--profile", help="placement profile (infra/profiles): local runs "
                                            "everything on SQLite and the LocalExecutor; hybrid and cloud add "
                                            "Postgres, Redis, Celery and Kubernetes")] = "local",
       no_cluster: Annotated[bool, typer.Option("--no-cluster", help="no Kubernetes here: the profile's "
                                                "KubernetesExecutor steps run on the LocalExecutor")] = False) -> None:
    """Start MLflow, kiln-model-server and Airflow's components on 127.0.0.1, each supervised."""
    from infra.airflow.placement import PlacementError, load_profile

    try:
        load_profile(profile)
    except PlacementError as exc:
        raise fail(f"--profile: {exc}") from None
    stack = _stack(home, airflow_port, mlflow_port, rest_port, grpc_port)
    stack.profile, stack.no_cluster = profile, no_cluster
    if no_cluster and "KubernetesExecutor" in load_profile(profile).executors:
        err.print(f"--no-cluster: profile {profile}'s KubernetesExecutor steps run on the LocalExecutor",
                  markup=False)
    _start(stack)


def _start(stack: Stack) -> None:
    os.environ["KILN_HOME"] = str(stack.home)
    started = time.monotonic()
    try:
        stack.up(report=say)
    except StackError as exc:
        raise fail(str(exc)) from None
    err.print(f"stack up in {time.monotonic() - started:.1f}s: Airflow UI {stack.airflow_url} "
              f"(admin password in {stack.airflow_home}/simple_auth_manager_passwords.json.generated), "
              f"MLflow {stack.mlflow_url}, TF Serving REST {stack.serving_rest_url}", highlight=False, markup=False)


@app.command()
def down(home: Home = None,
         drop_databases: Annotated[bool, typer.Option("--drop-databases", help="also drop the fleet's Postgres "
                                                      "databases (Airflow's and MLflow's metadata)")] = False) -> None:
    """Stop the stack started by `kiln up`."""
    stack = Stack(kiln_home(home))
    if not stack.is_recorded():
        err.print(f"no stack recorded in {stack.home}; nothing to stop", markup=False)
        return
    stack.down(report=say, drop_databases=drop_databases)


@app.command()
def init(
    csv_path: Annotated[Path, typer.Argument(help="the data to learn from: CSV (header row), Parquet, JSON lines or "
                                                  "TFRecord of tf.train.Example, one example per row (a file, a "
                                                  "folder or a glob); or an image folder, a folder per class")],
    label: Annotated[str | None, typer.Option("--label", help="the column to predict (an image folder's: label, "
                                                              "its class folder)")] = None,
    name: Annotated[str | None, typer.Option("--name", help="pipeline name (default: from the file name)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for <name>.yaml and <name>.schema.pbtxt")] = Path(
        "pipelines"),
    task: Annotated[str | None, typer.Option("--task", help="classification or regression (default: inferred)")] = None,
    model: Annotated[str | None, typer.Option("--model", help="mlp, cnn, file.py:function or package.module:function "
                                                              "(default: cnn for images, else mlp)")] = None,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing files")] = False,
    data_format: Annotated[str | None, typer.Option("--format", help="csv, parquet, jsonl, tfrecord or images "
                                                                      "(default: from the file's suffix)")] = None,
) -> None:
    """Infer a pipeline from a data file: writes <out>/<name>.yaml and <out>/<name>.schema.pbtxt."""
    from infra.cli.init import infer, renamed_columns, write_files

    if task not in (None, "classification", "regression"):
        raise fail(f"--task {task!r}: use classification or regression")
    try:
        inferred = infer(csv_path, label, name, out_dir, task, data_format)
        write_files(inferred, csv_path, model or ("cnn" if inferred.image_shape else "mlp"), force)
    except BadInputError as exc:
        raise fail(str(exc)) from None
    profile = inferred.profile
    table = Table(title=f"{csv_path}: {profile.rows:,} rows, {len(profile.header)} columns")
    for column in ("column", "type", "missing", "distinct", "role"):
        table.add_column(column)
    for column in profile.columns.values():
        role = "label" if column.name == inferred.label else "feature"
        distinct = "-" if column.type == "image" else "> 1000" if column.distinct is None else str(column.distinct)
        table.add_row(column.name, column.type or "empty", f"{column.missing:,}", distinct, role)
    out.print(table)
    classes = f" with classes {inferred.classes}" if inferred.classes is not None else ""
    metric, value = inferred.threshold
    out.print(f"task: {inferred.task}{classes}; blessing threshold {metric} {value}", highlight=False, markup=False)
    for column, served in renamed_columns(profile, inferred.label).items():
        out.print(f"note: column {column!r} is served as {served!r} (TF signature names)", markup=False)
    out.print(f"wrote {inferred.yaml_path} and {inferred.schema_path}; run it with `kiln run {inferred.yaml_path}`",
              highlight=False, markup=False)


def _parse_params(params: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise fail(f"--param {item!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(value) if value else None
    return overrides


def validated_config(config_path: Path, overrides: dict[str, Any], home: Path) -> PipelineConfig:
    """The config as the run will see it; every bad input stops here, before anything is triggered."""
    from tasks.models.contract import check_model_function
    from tasks.registry import apply_params

    os.environ["KILN_HOME"] = str(home)
    try:
        config = apply_params(load_config(config_path), overrides)
        from tasks.snapshot import with_span

        source = with_span(config).data.source  # a spanned source: its newest span must exist
        if "://" not in source and not Path(source).exists() and not glob.glob(source):  # a file, folder or glob
            hint = "; `kiln demo-data` writes the demo data sets there" if Path(source).parent == home / "data" else ""
            raise fail(f"data source not found: {source} (data.source in {config_path}){hint}")
        check_model_function(config.train.model, config.train.hparams)
    except BadInputError as exc:
        raise fail(f"{config_path}: {exc}" if str(config_path) not in str(exc) else str(exc)) from None
    return config


@app.command("demo-data")
def demo_data(
    home: Home = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", help=f"one of {', '.join(DATASETS)} (default: all)")]
    = None,
) -> None:
    """Write the demo data sets (scikit-learn's bundled copies) to $KILN_HOME/data/<pipeline>.csv."""
    names = [pipeline] if pipeline else list(DATASETS)
    for name in names:
        if name not in DATASETS:
            raise fail(f"--pipeline {name!r}: demo data sets are {', '.join(DATASETS)}")
        err.print(f"wrote {DATASETS[name](kiln_home(home) / 'data' / f'{name}.csv')}", highlight=False, markup=False)


@app.command()
def run(
    config_path: Annotated[Path, typer.Argument(help="pipeline YAML (any path)")] = DEFAULT_CONFIG,
    param: Params = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="run every step, reusing no earlier output")] = False,
    no_cache_step: Annotated[list[str] | None, typer.Option(
        "--no-cache-step", help="run this step whatever its cache key (repeatable)")] = None,
    as_json: AsJson = False,
    home: Home = None,
) -> None:
    """Trigger the pipeline's DAG (kiln_<pipeline>) through Airflow's REST API and follow it."""
    home_path = kiln_home(home)
    config_path = config_path.resolve()
    overrides = _parse_params(param or [])
    if no_cache:
        overrides["cache"] = False
    if no_cache_step:
        overrides["no_cache_steps"] = list(no_cache_step)
    config = validated_config(config_path, overrides, home_path)
    from infra.airflow.placement import check_executors, placement_lines

    try:
        stack = Stack.load(home_path)
        # Placed as the stack's services place it: a pipeline that names no profile takes the stack's.
        placed = config.model_copy(update={"placement": config.placement.model_copy(
            update={"profile": config.placement.profile or stack.profile})})
        check_executors(placed, stack.executors, stack.remap)
    except (StackError, BadInputError) as exc:
        raise fail(str(exc)) from None
    err.print(f"placement (profile {placed.placement.profile}):", highlight=False, markup=False)
    for line in placement_lines(placed, stack.remap):
        say(line)
    summary = run_and_summarize(stack, config_path, overrides, config)
    report_run(summary, as_json)
    if summary["state"] != "success":
        raise typer.Exit(1)


def run_and_summarize(stack: Stack, config_path: Path, overrides: dict[str, Any],
                      config: PipelineConfig) -> dict[str, Any]:
    import httpx
    from mlflow.exceptions import MlflowException

    from infra.airflow.pipelines import register
    from infra.cli.console import bound_mlflow_retries
    from infra.cli.runner import RunFailed, summarize, trigger_and_follow, write_summary
    from serving.client import ServingClientError

    bound_mlflow_retries()
    try:
        if register(stack.home, config.pipeline, config_path):
            err.print(f"pipeline {config.pipeline}: {config_path} registered with the stack", markup=False)
        client, run_id = trigger_and_follow(stack, config, config_path, overrides, print_task, report=say)
        summary = summarize(client, stack, run_id, config)
    except BadInputError as exc:
        raise fail(str(exc)) from None
    except (AirflowApiError, RunFailed) as exc:
        raise fail(str(exc), code=1) from None
    except (httpx.HTTPError, MlflowException, ServingClientError, OSError) as exc:  # one line, not a traceback
        lines = str(exc).strip().splitlines()
        raise fail(f"{type(exc).__name__}: {lines[0] if lines else ''}", code=1) from None
    summary["summary_path"] = str(write_summary(stack.home, summary))
    return summary


@app.command()
def demo(
    pipeline: Annotated[str, typer.Option("--pipeline", help=f"one of {', '.join(DATASETS)}")] = "digits",
    home: Home = None,
    as_json: AsJson = False,
    airflow_port: Port = None,
    mlflow_port: Port = None,
    rest_port: Port = None,
    grpc_port: Port = None,
) -> None:
    """up -> write the pipeline's demo data -> run -> summary -> down."""
    if pipeline not in DATASETS:
        raise fail(f"--pipeline {pipeline!r}: demo pipelines are {', '.join(DATASETS)}")
    config_path = SHIPPED / f"{pipeline}.yaml"
    stack = _stack(home, airflow_port, mlflow_port, rest_port, grpc_port)
    _start(stack)
    try:
        data = DATASETS[pipeline](stack.home / "data" / f"{pipeline}.csv")
        err.print(f"demo data: {data}", highlight=False, markup=False)
        config = validated_config(config_path, {}, stack.home)
        summary = run_and_summarize(stack, config_path, {}, config)
        report_run(summary, as_json)
    finally:
        stack.down(report=say)
    if summary["state"] != "success":
        raise typer.Exit(1)


@app.command()
def steps() -> None:
    """The pipeline's steps, in order, as the registry declares them (what every DAG runs)."""
    from tasks.registry import STEPS

    table = Table(title="kiln steps (tasks/registry.py)")
    table.add_column("step", no_wrap=True)
    for column in ("does", "reads", "writes", "params"):
        table.add_column(column)
    for spec in STEPS:
        table.add_row(spec.name, spec.description, ", ".join(spec.inputs), ", ".join(spec.outputs),
                      ", ".join(spec.params))
    out.print(table)


@app.command()
def digest(
    folder: Annotated[Path, typer.Argument(help="a model version folder (what TF Serving loads as one version)")],
) -> None:
    """The folder's content digest, as evaluate records it and push and verify check it (sha256 over every file's
    relative path, a NUL byte and its own sha256, in path order)."""
    from common.digest import folder_digest

    if not folder.is_dir():
        raise fail(f"{folder}: not a folder")
    try:
        print(folder_digest(folder))
    except OSError as exc:
        raise fail(f"{folder}: {exc.strerror or exc}") from None


@app.command()
def lineage(
    model: Annotated[str, typer.Argument(help="registered model (kiln-digits) or pipeline / served name (digits)")],
    version: Annotated[int, typer.Argument(help="the version; TF Serving's version N is MLflow's version N", min=1)],
    as_json: AsJson = False,
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow to ask (default: the stack's)")] = None,
    home: Home = None,
) -> None:
    """From a model version back to its DAG run, data, schema and code, through MLflow alone."""
    from infra.cli.lineage import lineage as walk

    home_path = kiln_home(home)
    try:
        uri = tracking_uri or Stack.load(home_path).mlflow_url
        found = walk(uri, _registered_name(model, home_path), version)
    except (BadInputError, StackError) as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(found, indent=2))
        return
    table = Table(title=f"{found['model']} v{found['version']}", show_header=False)
    schema = found.pop("schema")
    features = schema["features"]
    found["schema"] = f"{schema['artifact']} ({len(features)} features: {', '.join(features[:4])}" \
                      f"{', ...' if len(features) > 4 else ''})"
    for key, value in found.items():
        if key not in ("model", "version") and value not in (None, [], ""):
            table.add_row(key, Text(json.dumps(value) if isinstance(value, list | dict) else str(value)))
    out.print(table)


def _registered_name(model: str, home: Path) -> str:
    """A pipeline or served model name means that pipeline's registered model; anything else is one."""
    from infra.airflow.pipelines import discover

    for path in discover(home).values():
        try:
            config = load_config(path, expand_env=False)
        except BadInputError:
            continue
        if model in (config.pipeline, config.served_model_name):
            return config.registered_model_name
    return model


@app.command()
def status(home: Home = None) -> None:
    """Stack health, each pipeline's last runs, registry aliases and served versions."""
    home_path = kiln_home(home)
    try:
        stack = Stack.load(home_path)
    except StackError as exc:
        raise fail(str(exc), code=1) from None
    out.print(services_table(stack))
    print_pipelines(stack)


register_serving_commands(app)
app.command()(predict)
register_approval_commands(app)
app.add_typer(data_app, name="data")
app.add_typer(cache_app, name="cache")


def main() -> None:  # pragma: no cover - console entry for `python -m infra.cli.app`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
