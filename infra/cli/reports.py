"""What the `kiln` commands print about runs and the stack: a run's task lines and its summary tables
(`kiln run`, `kiln demo`), the services and each pipeline's runs, aliases and served versions (`kiln status`).
Values from Airflow, MLflow and the server are data: they reach rich as Text, never as markup."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table
from rich.text import Text

from infra.cli.airflow_api import AirflowApiError, TaskState
from infra.cli.console import err, out, say
from infra.stack.stack import Stack
from tasks.config import load_config
from tasks.errors import BadInputError
from tasks.metrics import HEADLINE

# A style for every state of Airflow's TaskInstanceState (and "none": a cleared task); a state this table
# does not know prints unstyled. States are data: they reach rich as Text, never as markup.
STATE_STYLE = {
    "success": "green", "failed": "red", "upstream_failed": "red", "removed": "red",
    "running": "yellow", "restarting": "yellow", "up_for_retry": "yellow",
    "up_for_reschedule": "cyan", "deferred": "cyan", "awaiting_input": "cyan",
    "queued": "dim", "scheduled": "dim", "skipped": "dim", "none": "dim",
}
STATUS_RETRY_SECONDS = 15


def print_task(task: TaskState) -> None:
    """One line per change of a task's state or try: `  train           running (try 2)`."""
    state = str(task.state or "none")
    shown = f"{state} (try {task.try_number})" if task.try_number > 1 else state
    shown = f"{shown}, {task.note}" if task.note else shown
    took = f" ({task.duration:.1f}s)" if task.duration is not None and state in ("success", "failed") else ""
    err.print(Text.assemble(f"  {task.task_id:15s} ", (shown, STATE_STYLE.get(state, "")), took),
              highlight=False, soft_wrap=True)


def report_run(summary: dict[str, Any], as_json: bool) -> None:
    """A run's summary as JSON on stdout or as tables; a failed run's log tail and error on stderr."""
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


def services_table(stack: Stack) -> Table:
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


def print_pipelines(stack: Stack) -> None:
    from infra.airflow.pipelines import discover
    from infra.cli.retraining_status import retraining_row
    from infra.cli.runner import airflow_client, registry_aliases, served_state

    try:  # a snapshot: a restarting api-server is waited for briefly, not for a run's 120 s
        client = airflow_client(stack, report=say, retry_for=STATUS_RETRY_SECONDS)
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
