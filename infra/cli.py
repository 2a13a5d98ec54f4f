"""The `kiln` command: the embedded stack (up/down/status), pipeline runs, and the demo."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from infra.airflow_api import AirflowApiError
from infra.stack import REPO_ROOT, Stack, StackError, StackPorts, kiln_home
from tasks.config import PipelineConfig, load_config
from tasks.errors import BadInputError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
out = Console()
err = Console(stderr=True)

DEFAULT_CONFIG = REPO_ROOT / "pipelines" / "digits.yaml"
STATE_STYLE = {"success": "green", "failed": "red", "running": "yellow", "upstream_failed": "red", "queued": "dim"}

Home = Annotated[Path | None, typer.Option("--home", help="state folder (default: $KILN_HOME or ./.kiln)")]
Port = Annotated[int | None, typer.Option(min=1, max=65535)]


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _stack(home: Path | None, airflow_port: int | None, mlflow_port: int | None, rest_port: int | None,
           grpc_port: int | None) -> Stack:
    ports = StackPorts.from_env(airflow=airflow_port, mlflow=mlflow_port, serving_rest=rest_port,
                                serving_grpc=grpc_port)
    return Stack(kiln_home(home), ports)


@app.command()
def up(
    home: Home = None,
    airflow_port: Port = None,
    mlflow_port: Port = None,
    rest_port: Port = None,
    grpc_port: Port = None,
) -> None:
    """Start Airflow standalone, MLflow and kiln-model-server on 127.0.0.1."""
    _start(_stack(home, airflow_port, mlflow_port, rest_port, grpc_port))


def _start(stack: Stack, report=None) -> None:
    os.environ["KILN_HOME"] = str(stack.home)
    started = time.monotonic()
    try:
        stack.up(report=report or (lambda line: err.print(f"  {line}", highlight=False)))
    except StackError as exc:
        raise _fail(str(exc)) from None
    err.print(f"stack up in {time.monotonic() - started:.1f}s: Airflow UI {stack.airflow_url} "
              f"(admin password in {stack.airflow_home}/simple_auth_manager_passwords.json.generated), "
              f"MLflow {stack.mlflow_url}, TF Serving REST {stack.serving_rest_url}", highlight=False)


@app.command()
def down(home: Home = None) -> None:
    """Stop the stack started by `kiln up`."""
    stack = Stack(kiln_home(home))
    if not stack.is_recorded():
        err.print(f"no stack recorded in {stack.home}; nothing to stop")
        return
    stack.down(report=lambda line: err.print(f"  {line}", highlight=False))


def _parse_params(params: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _fail(f"--param {item!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(value) if value else None
    return overrides


def validated_config(config_path: Path, overrides: dict[str, Any], home: Path) -> PipelineConfig:
    os.environ["KILN_HOME"] = str(home)
    try:
        config = load_config(config_path, overrides)
    except BadInputError as exc:
        raise _fail(str(exc)) from None
    source = config.data.source
    if "://" not in source and not Path(source).is_file():
        hint = "; `kiln demo-data` writes the demo data set there" if source == str(_demo_data_path(home)) else ""
        raise _fail(f"data source not found: {source} (data.source in {config_path}){hint}")
    return config


def _demo_data_path(home: Path) -> Path:
    return home / "data" / "digits.csv"


@app.command("demo-data")
def demo_data(home: Home = None) -> None:
    """Write the demo data set (sklearn's bundled 8x8 digits) to $KILN_HOME/data/digits.csv."""
    from infra.demo_data import write_digits_csv

    err.print(f"wrote {write_digits_csv(_demo_data_path(kiln_home(home)))}", highlight=False)


@app.command()
def run(
    config_path: Annotated[Path, typer.Argument(help="pipeline YAML")] = DEFAULT_CONFIG,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="override, e.g. epochs=3")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON summary object")] = False,
    home: Home = None,
) -> None:
    """Trigger kiln_train_deploy through Airflow's REST API and follow it."""
    home_path = kiln_home(home)
    overrides = _parse_params(param or [])
    config = validated_config(config_path.resolve(), overrides, home_path)
    try:
        stack = Stack.load(home_path)
    except StackError as exc:
        raise _fail(str(exc)) from None
    summary = run_and_summarize(stack, config_path.resolve(), overrides, config)
    _report(summary, as_json)
    if summary["state"] != "success":
        raise typer.Exit(1)


def run_and_summarize(stack: Stack, config_path: Path, overrides: dict[str, Any], config: PipelineConfig) -> dict[str, Any]:
    from infra.runner import summarize, trigger_and_follow, write_summary

    def on_task(task_id: str, state: str, seconds: float | None) -> None:
        took = f" ({seconds:.1f}s)" if seconds is not None and state in ("success", "failed") else ""
        style = STATE_STYLE.get(state, "")
        err.print(f"  {task_id:10s} [{style}]{state}[/]{took}", highlight=False)

    try:
        client, run_id = trigger_and_follow(stack, config_path, overrides, on_task)
        summary = summarize(client, stack, run_id, config)
    except AirflowApiError as exc:
        raise _fail(str(exc), code=1) from None
    summary["summary_path"] = str(write_summary(stack.home, summary))
    return summary


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    if summary["state"] != "success":
        err.print(f"run {summary['run_id']}: task log tail", highlight=False)
        for line in summary.get("failed_log_tail", []):
            err.print(f"  | {line}", highlight=False, markup=False)
        err.print(f"[bold red]error:[/] {summary.get('error', 'run failed')}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"kiln run {summary['run_id']}", show_header=False)
    prediction = summary["prediction"]
    mlflow, serving = summary["mlflow"], summary["serving"]
    rows = [
        ("state", summary["state"]),
        ("wall time", f"{summary['wall_seconds']} s, of which {summary['scheduling_overhead_seconds']} s "
                      f"({summary['scheduling_overhead_percent']} %) with no task running"),
        ("tasks", ", ".join(f"{k} {v:.1f}s" for k, v in summary["task_seconds"].items())),
        ("eval accuracy", f"{summary['eval_accuracy']:.4f} (TFLite {summary.get('tflite_accuracy') or 0:.4f})"),
        ("model sizes", ", ".join(f"{k} {v:,}" for k, v in summary["model_sizes"].items())),
        ("MLflow model", f"{mlflow['model_name']} v{mlflow['version']} aliases {mlflow['aliases']}"),
        ("served", f"{serving['model_name']} v{serving['version']} labels {serving['labels']}"),
        ("prediction", f"digit {prediction['predicted_digit']} (true {prediction['true_digit']}, "
                       f"p={prediction['probability']}) in {prediction['latency_ms']} ms via label stable"),
        ("summary", summary["summary_path"]),
    ]
    for key, value in rows:
        table.add_row(key, str(value))
    out.print(table)


@app.command()
def demo(
    home: Home = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    airflow_port: Port = None,
    mlflow_port: Port = None,
    rest_port: Port = None,
    grpc_port: Port = None,
) -> None:
    """up → write the digits data set → run → summary → down."""
    from infra.demo_data import write_digits_csv

    stack = _stack(home, airflow_port, mlflow_port, rest_port, grpc_port)
    _start(stack)
    try:
        data = write_digits_csv(_demo_data_path(stack.home))
        err.print(f"demo data: {data}")
        config = validated_config(DEFAULT_CONFIG, {}, stack.home)
        summary = run_and_summarize(stack, DEFAULT_CONFIG, {}, config)
        _report(summary, as_json)
    finally:
        stack.down(report=lambda line: err.print(f"  {line}", highlight=False))
    if summary["state"] != "success":
        raise typer.Exit(1)


@app.command()
def status(home: Home = None) -> None:
    """Stack health, last runs, registry aliases and served versions."""
    home_path = kiln_home(home)
    try:
        stack = Stack.load(home_path)
    except StackError as exc:
        raise _fail(str(exc), code=1) from None
    table = Table(title=f"kiln stack ({home_path})")
    table.add_column("service")
    table.add_column("health")
    for name, healthy in stack.health().items():
        table.add_row(name, "[green]healthy[/]" if healthy else "[red]down[/]")
    out.print(table)
    _print_runs(stack)
    _print_models(stack)


def _print_runs(stack: Stack) -> None:
    from infra.airflow_api import AirflowClient, admin_password
    from infra.runner import DAG_ID

    try:
        client = AirflowClient(stack.airflow_url, "admin", admin_password(stack.airflow_home))
        runs = client.latest_runs(DAG_ID)
    except (AirflowApiError, OSError) as exc:
        err.print(f"runs unavailable: {exc}")
        return
    table = Table(title="last runs")
    table.add_column("run id", no_wrap=True)
    for column in ("state", "started", "ended"):
        table.add_column(column)
    for run in runs:
        table.add_row(run["dag_run_id"], run["state"], str(run.get("start_date")), str(run.get("end_date")))
    out.print(table)


def _print_models(stack: Stack) -> None:
    from infra.runner import registry_aliases
    from serving.client import RestClient, ServingClientError
    from serving.deployer import read_config

    table = Table(title="models")
    for column in ("model", "MLflow aliases", "served versions", "labels"):
        table.add_column(column)
    config = read_config(stack.serving_config)
    with RestClient(stack.serving_rest_url, timeout=5) as client:
        for entry in config.model_config_list.config:
            try:
                states = ", ".join(f"v{s['version']} {s['state']}" for s in client.status(entry.name))
            except (ServingClientError, OSError) as exc:
                states = f"unavailable ({exc})"
            try:
                aliases = registry_aliases(stack.mlflow_url, _registered_name())
            except Exception as exc:  # the registry being down must not hide serving state
                aliases = {"unavailable": str(exc)}
            table.add_row(entry.name, str(aliases), states, str(dict(entry.version_labels)))
    out.print(table)


def _registered_name() -> str:
    try:
        return load_config(DEFAULT_CONFIG).registry.model_name
    except BadInputError:
        return PipelineConfig.model_fields["registry"].default.model_name


def main() -> None:  # pragma: no cover - console entry for `python -m infra.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
