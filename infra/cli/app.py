"""The `kiln` command: pipelines from a CSV (init), runs on the embedded stack (up/run/status/down), demos,
serving by the registry (promote/rollback/sync) and a run's approval (approve/reject)."""

from __future__ import annotations

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

from infra.cli.airflow_api import AirflowApiError, TaskState
from infra.cli.approval_commands import register as register_approval_commands
from infra.cli.console import AsJson, Home, err, fail, out
from infra.cli.data_commands import data_app
from infra.cli.demo_data import DATASETS
from infra.cli.serving_commands import register as register_serving_commands
from infra.stack.stack import REPO_ROOT, Stack, StackError, StackPorts, kiln_home
from tasks.config import PipelineConfig, load_config
from tasks.errors import BadInputError
from tasks.metrics import HEADLINE

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

PIPELINES = REPO_ROOT / "pipelines"
DEFAULT_CONFIG = PIPELINES / "digits.yaml"
# A style for every state of Airflow's TaskInstanceState (and "none": a cleared task); a state this table
# does not know prints unstyled. States are data: they reach rich as Text, never as markup.
STATE_STYLE = {
    "success": "green", "failed": "red", "upstream_failed": "red", "removed": "red",
    "running": "yellow", "restarting": "yellow", "up_for_retry": "yellow",
    "up_for_reschedule": "cyan", "deferred": "cyan", "awaiting_input": "cyan",
    "queued": "dim", "scheduled": "dim", "skipped": "dim", "none": "dim",
}

STATUS_RETRY_SECONDS = 15
Port = Annotated[int | None, typer.Option(min=1, max=65535)]
Params = Annotated[list[str] | None, typer.Option("--param", "-p", help="override, e.g. epochs=3 (see `kiln steps`)")]


def _stack(home: Path | None, airflow_port: int | None, mlflow_port: int | None, rest_port: int | None,
           grpc_port: int | None) -> Stack:
    ports = StackPorts.from_env(airflow=airflow_port, mlflow=mlflow_port, serving_rest=rest_port,
                                serving_grpc=grpc_port)
    return Stack(kiln_home(home), ports)


def _say(line: str) -> None:
    err.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)  # URLs and commands stay copyable


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
        stack.up(report=_say)
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
    stack.down(report=_say, drop_databases=drop_databases)


@app.command()
def init(
    csv_path: Annotated[Path, typer.Argument(help="the CSV to learn from (header row, one example per row)")],
    label: Annotated[str, typer.Option("--label", help="the column to predict")],
    name: Annotated[str | None, typer.Option("--name", help="pipeline name (default: from the file name)")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for <name>.yaml and <name>.schema.pbtxt")] = Path(
        "pipelines"),
    task: Annotated[str | None, typer.Option("--task", help="classification or regression (default: inferred)")] = None,
    model: Annotated[str, typer.Option("--model", help="mlp, cnn, file.py:function or package.module:function")] = "mlp",
    force: Annotated[bool, typer.Option("--force", help="overwrite existing files")] = False,
) -> None:
    """Infer a pipeline from a CSV: writes <out>/<name>.yaml and <out>/<name>.schema.pbtxt."""
    from infra.cli.init import infer, renamed_columns, write_files

    if task not in (None, "classification", "regression"):
        raise fail(f"--task {task!r}: use classification or regression")
    try:
        inferred = infer(csv_path, label, name, out_dir, task)
        write_files(inferred, csv_path, model, force)
    except BadInputError as exc:
        raise fail(str(exc)) from None
    profile = inferred.profile
    table = Table(title=f"{csv_path}: {profile.rows:,} rows, {len(profile.header)} columns")
    for column in ("column", "type", "missing", "distinct", "role"):
        table.add_column(column)
    for column in profile.columns.values():
        role = "label" if column.name == label else "feature"
        distinct = "> 1000" if column.distinct is None else str(column.distinct)
        table.add_row(column.name, column.type or "empty", f"{column.missing:,}", distinct, role)
    out.print(table)
    classes = f" with classes {inferred.classes}" if inferred.classes is not None else ""
    metric, value = inferred.threshold
    out.print(f"task: {inferred.task}{classes}; blessing threshold {metric} {value}", highlight=False, markup=False)
    for column, served in renamed_columns(profile, label).items():
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
        if "://" not in source and not Path(source).is_file():
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
    as_json: AsJson = False,
    home: Home = None,
) -> None:
    """Trigger the pipeline's DAG (kiln_<pipeline>) through Airflow's REST API and follow it."""
    home_path = kiln_home(home)
    config_path = config_path.resolve()
    overrides = _parse_params(param or [])
    config = validated_config(config_path, overrides, home_path)
    from infra.airflow.placement import check_executors

    try:
        stack = Stack.load(home_path)
        check_executors(config, stack.executors, stack.remap)
    except (StackError, BadInputError) as exc:
        raise fail(str(exc)) from None
    summary = run_and_summarize(stack, config_path, overrides, config)
    _report(summary, as_json)
    if summary["state"] != "success":
        raise typer.Exit(1)


def _print_task(task: TaskState) -> None:
    """One line per change of a task's state or try: `  train           running (try 2)`."""
    state = str(task.state or "none")
    shown = f"{state} (try {task.try_number})" if task.try_number > 1 else state
    took = f" ({task.duration:.1f}s)" if task.duration is not None and state in ("success", "failed") else ""
    err.print(Text.assemble(f"  {task.task_id:15s} ", (shown, STATE_STYLE.get(state, "")), took),
              highlight=False, soft_wrap=True)


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
        client, run_id = trigger_and_follow(stack, config, config_path, overrides, _print_task, report=_say)
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


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        _say_if_not_promoted(summary)
        return
    if summary["state"] != "success":
        err.print(f"run {summary['run_id']}: task log tail", highlight=False, markup=False)
        for line in summary.get("failed_log_tail", []):
            err.print(f"  | {line}", highlight=False, markup=False)
        err.print(Text.assemble(("error:", "bold red"), " ", summary.get("error", "run failed")), soft_wrap=True)
        return
    table = Table(title=Text(f"kiln run {summary['run_id']}"), show_header=False)
    for key, value in summary_rows(summary):
        table.add_row(Text(key), Text(str(value)))
    out.print(table)
    _print_variants(summary["optimize"])
    _print_checks(summary["blessing"])
    _say_if_not_promoted(summary)


def _train_line(train: dict[str, Any]) -> str:
    if not train["restarts"]:
        return "no worker restarts"
    return f"{train['restarts']} worker group restart(s), resumed after epoch {train['resumed_from_epoch']}"


def _infra_line(infra: dict[str, Any] | None) -> str:
    if infra is None:
        return "skipped (not blessed)"
    verdict = "infra-blessed" if infra["blessed"] else "NOT infra-blessed"
    return f"{verdict}: {infra['reason']}" + (f" (REST p99 {infra['rest_p99_ms']} ms, gRPC p99 {infra['grpc_p99_ms']} ms)"
                                              if infra.get("rest_p99_ms") is not None else "")


def _approval_line(approval: dict[str, Any]) -> str:
    when = approval["at"].replace("T", " ")
    if approval["decision"] == "timed_out":
        return f"timed out at {when}: nobody answered (approvals of this model timed out: " \
               f"{approval['approval_timeouts']})"
    said = f": {approval['comment']}" if approval["comment"] else ""
    return f"{approval['decision']} by {approval['by']} at {when}{said}"


def _optimize_line(optimize: dict[str, Any], metric: str) -> str:
    baseline = optimize["baseline"]
    if baseline["skipped_reason"]:
        return f"no TFLite: {baseline['skipped_reason']}"
    chosen = next((v for v in optimize["variants"] if v["name"] == optimize["selected"]), baseline)
    return (f"selected {chosen['name']}: {metric} {chosen['metric']:.4f} (float32 TFLite {baseline['metric']:.4f}); "
            f"budget {optimize['budget']:g} {optimize['budget_unit']}")


def _shipped_line(summary: dict[str, Any]) -> str:
    """What serves: the version folder evaluate blessed and push shipped, against the trained SavedModel."""
    shipped = summary["shipped"]
    ratio = shipped["trained_saved_model_bytes"] / shipped["bytes"]
    return (f"{shipped['variant']} as {shipped['format']}: {shipped['bytes']:,} B ({shipped['gzip_bytes']:,} B "
            f"gzip), {ratio:.1f}x smaller than the trained SavedModel ({shipped['trained_saved_model_bytes']:,} B); "
            f"sha256 {shipped['sha256'][:12]}")


def _print_variants(optimize: dict[str, Any]) -> None:
    if not optimize["variants"]:
        return
    table = Table(title=Text(f"optimize: selected {optimize['selected']} (budget {optimize['budget']:g} "
                             f"{optimize['budget_unit']})"))
    for column in ("variant", optimize["baseline"]["metric_name"], "bytes", "gzip", "p50 ms", "sparsity", "budget"):
        table.add_column(column, justify="left" if column in ("variant", "budget") else "right")
    for v in [optimize["baseline"], *optimize["variants"]]:
        name = Text(v["name"], "bold" if v["name"] == optimize["selected"] else "")
        if v["skipped_reason"]:
            table.add_row(name, Text(f"skipped: {v['skipped_reason']}", "dim"), "", "", "", "", "")
            continue
        table.add_row(name, f"{v['metric']:.4f}", f"{v['bytes']:,}", f"{v['gzip_bytes']:,}",
                      f"{v['latency_ms_p50']:.3f}", f"{v['sparsity']:.0%}", "within" if v["within_budget"] else "over")
    out.print(table)


def _print_checks(blessing: dict[str, Any]) -> None:
    if not blessing["checks"]:
        return
    champion = f" (against champion v{blessing['champion_version']})" if blessing["champion_version"] else ""
    table = Table(title=f"blessing checks{champion}: {'blessed' if blessing['blessed'] else 'NOT blessed'}")
    for column in ("check", "value", "threshold", "result"):
        table.add_column(column)
    for check in blessing["checks"]:
        table.add_row(Text(check["name"]), "-" if check["value"] is None else f"{check['value']:.4f}",
                      "-" if check["threshold"] is None else f"{check['threshold']:.4f}",
                      Text("pass", "green") if check["passed"] else Text("FAIL", "red"))
    out.print(table)


def _say_if_not_promoted(summary: dict[str, Any]) -> None:
    """An unblessed model is an outcome: said on stderr, exit code 0."""
    if summary["state"] == "success" and not summary["promoted"]:
        err.print(Text.assemble(("not promoted:", "bold yellow"), " ", summary["not_promoted"]), soft_wrap=True)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    metric = HEADLINE[summary["task"]]
    lite = _optimize_line(summary["optimize"], metric)
    mlflow, serving, blessing = summary["mlflow"], summary["serving"], summary["blessing"]
    failed = sum(not c["passed"] for c in blessing["checks"])
    verdict = f"blessed ({len(blessing['checks'])} checks passed)" if blessing["blessed"] \
        else f"NOT blessed ({failed} of {len(blessing['checks'])} checks failed)"
    rows = [
        ("state", summary["state"]),
        ("wall time", f"{summary['wall_seconds']} s, of which {summary['scheduling_overhead_seconds']} s "
                      f"({summary['scheduling_overhead_percent']} %) with no task running"),
        ("tasks", ", ".join(f"{k} {v:.1f}s" for k, v in summary["task_seconds"].items())),
        ("train", _train_line(summary["train"])),
        (f"eval ({summary['task']})", ", ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items())
         + " (as shipped)"),
        ("trained float model", ", ".join(f"{k} {v:.4f}" for k, v in summary["metrics_trained"].items())
         + " (context, not gated)"),
        ("blessing", verdict),
        ("optimize", lite),
        ("shipped", _shipped_line(summary)),
        ("infra validation", _infra_line(summary.get("infra_blessing"))),
        *([("approval", _approval_line(summary["approval"]))] if summary.get("approval") else []),
        ("MLflow model", f"{mlflow['model_name']} v{mlflow['version']} "
                         f"({'blessed' if mlflow['blessed'] else 'not blessed'}), aliases {mlflow['aliases']}"),
        ("served", f"{serving['model_name']} versions {serving['versions']}, labels {serving['labels']}"
                   + ("" if summary["promoted"] else " (unchanged: not promoted)")
                   + (f"; the server did not answer: {serving['error']}" if serving.get("error") else "")),
    ]
    if summary.get("prediction_error"):
        rows.append(("prediction", summary["prediction_error"]))
    prediction = summary.get("prediction")
    if prediction:
        answer = f"class {prediction['class']!r} (p={prediction['probability']})" if "class" in prediction \
            else f"{prediction['prediction']}"
        rows.append(("prediction", f"{answer} for the first CSV row (true {prediction['true']!r}) in "
                                   f"{prediction['latency_ms']} ms via label stable"))
    rows.append(("summary", summary["summary_path"]))
    return rows


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
    config_path = PIPELINES / f"{pipeline}.yaml"
    stack = _stack(home, airflow_port, mlflow_port, rest_port, grpc_port)
    _start(stack)
    try:
        data = DATASETS[pipeline](stack.home / "data" / f"{pipeline}.csv")
        err.print(f"demo data: {data}", highlight=False, markup=False)
        config = validated_config(config_path, {}, stack.home)
        summary = run_and_summarize(stack, config_path, {}, config)
        _report(summary, as_json)
    finally:
        stack.down(report=_say)
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
    out.print(_services_table(stack))
    _print_pipelines(stack)


def _services_table(stack: Stack) -> Table:
    """Each service as supervisord and its health check see it."""
    from infra.stack.supervision import SupervisorError

    table = Table(title=f"kiln stack ({stack.home})")
    for column in ("service", "state", "health", "pid", "uptime", "restarts"):
        table.add_column(column, justify="right" if column in ("pid", "uptime", "restarts") else "left")
    try:
        states = stack.supervisor.states()
    except SupervisorError as exc:
        err.print(f"supervisor: {exc}; `kiln up` restarts it", markup=False)
        states = {}
    for name, healthy in stack.health().items():
        state = states.get(name)
        running = state is not None and state.state == "RUNNING"
        table.add_row(
            name,
            Text(state.state if state else "unknown", "green" if running else "red"),
            Text("healthy", "green") if healthy else Text("down", "red"),
            str(state.pid) if state and state.pid else "-",
            _duration(state.uptime_seconds) if state and state.uptime_seconds is not None else "-",
            Text(str(state.restarts), "yellow" if state.restarts else "") if state else "-",
        )
    return table


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _print_pipelines(stack: Stack) -> None:
    from infra.airflow.pipelines import discover
    from infra.cli.retraining_status import retraining_row
    from infra.cli.runner import airflow_client, registry_aliases, served_state

    try:  # a snapshot: a restarting api-server is waited for briefly, not for a run's 120 s
        client = airflow_client(stack, report=_say, retry_for=STATUS_RETRY_SECONDS)
    except (AirflowApiError, OSError) as exc:
        client = None
        err.print(f"runs unavailable: {exc}", markup=False)
    table = Table(title="pipelines")
    for column in ("pipeline", "task", "last runs", "MLflow aliases", "served versions", "labels"):
        table.add_column(column)
    retraining = Table(title="retraining")
    for column in ("pipeline", "schedule", "next run", "last data event", "last drift check"):
        retraining.add_column(column)
    for name, path in discover(stack.home).items():
        try:
            config = load_config(path, expand_env=False)
        except BadInputError as exc:
            table.add_row(name, "-", Text(f"config error: {exc}", "red"), "", "", "")
            retraining.add_row(name, "-", "", "", "")
            continue
        served = _safe(lambda c=config: served_state(stack, c.served_model_name))
        cells = (_last_runs(client, f"kiln_{name}"),
                 _safe(lambda c=config: str(registry_aliases(stack.mlflow_url, c.registered_model_name))),
                 *_served_cells(served))
        table.add_row(name, config.task.type, *(Text(cell) for cell in cells))  # data, never markup
        retraining.add_row(name, *(Text(cell) for cell in retraining_row(client, config)))
    out.print(table)
    out.print(retraining)


def _served_cells(served: dict[str, Any] | str) -> tuple[str, str]:
    """(versions, labels) as the server reports them, or why it could not say."""
    if isinstance(served, str):
        return served, ""
    versions = ", ".join(f"v{v}" for v in served["versions"])
    return versions or "not served", str(served["labels"]) if served["labels"] else ""


def _last_runs(client: Any, dag_id: str) -> str:
    if client is None:
        return "unavailable"
    try:
        runs = client.latest_runs(dag_id, limit=3)
    except AirflowApiError:
        return "no DAG yet"
    return "\n".join(f"{r['dag_run_id']} {r['state']}" for r in runs) or "none"


def _safe(value: Any) -> Any:
    try:
        return value()
    except Exception as exc:  # noqa: BLE001 - one service being down must not hide the others
        return f"unavailable ({str(exc).splitlines()[0][:80]})"


register_serving_commands(app)
register_approval_commands(app)
app.add_typer(data_app, name="data")


def main() -> None:  # pragma: no cover - console entry for `python -m infra.cli.app`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
