"""The serving benchmark's report: system names, the issue's targets computed from the cells of one run, the
console table and the Markdown table for the README."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

# Display names of the systems, in table order.
ECHO_REST, ECHO_GRPC = "client ceiling: REST echo", "client ceiling: gRPC echo"
IN_PROCESS = "in-process serving_default (batch 1)"
IN_PROCESS_NESTED = "in-process serving_default, image CNN"
KILN_REST, KILN_GRPC = "kiln REST", "kiln gRPC"
KILN_REST_NESTED = "kiln REST, image CNN"
KILN_REST_NESTED_RELOADED = "kiln REST, image CNN, after a reload"
KILN_REST_X2, KILN_GRPC_X2 = "kiln REST x2 processes", "kiln gRPC x2 processes"
KILN_REST_NESTED_X2 = "kiln REST x2 processes, image CNN"
KILN_REST_BATCHED, KILN_GRPC_BATCHED = "kiln REST + batching", "kiln gRPC + batching"
KILN_REST_TFLITE = "kiln REST --prefer_tflite_model (dynamic range)"
KILN_REST_TFLITE_FLOAT = "kiln REST --prefer_tflite_model (float32)"
MLFLOW = "mlflow models serve"
# The request-logging cells: one server, the same model under three names (issue 22).
KILN_REST_UNLOGGED = "kiln REST, request log off"
KILN_REST_UNLOGGED_AGAIN = "kiln REST, request log off (again)"
KILN_REST_LOGGED_SOME = "kiln REST, request log 10 %"
KILN_REST_LOGGED_ALL = "kiln REST, request log 100 %"

P99_TARGET_MS, P999_TARGET_MS = 20.0, 40.0
IN_PROCESS_RATIO_TARGET = 0.5
MLFLOW_RATIO_TARGET = 20.0
TFLITE_RATIO_TARGET = 1.5
BATCHING_RATIO_TARGET = 1.5
REQUEST_LOG_SOME_TARGET = 0.95  # sampling_rate 0.1 costs at most 5 % of the req/s
REQUEST_LOG_ALL_TARGET = 0.80  # logging every request at most 20 %


def cell(cells: list[dict], system: str, concurrency: int) -> dict:
    return next(c for c in cells if c["system"] == system and c["concurrency"] == concurrency)


def _ratio(name: str, numerator: dict, denominator: dict, target: float) -> dict:
    value = numerator["req_per_s"] / denominator["req_per_s"] if denominator["req_per_s"] else None
    clean = not numerator["errors"] and not denominator["errors"]
    return {"name": name, "value": round(value, 2) if value is not None else None, "target": target,
            "met": bool(clean and value is not None and value >= target), "note": "" if clean else "a cell had errors"}


def _tail(name: str, measured: dict) -> dict:
    met = (not measured["errors"] and measured["p99_ms"] <= P99_TARGET_MS
           and measured["p999_ms"] <= P999_TARGET_MS)
    return {"name": name, "p99_ms": measured["p99_ms"], "p999_ms": measured["p999_ms"],
            "errors": measured["errors"], "target": f"p99 <= {P99_TARGET_MS:g} ms, p99.9 <= {P999_TARGET_MS:g} ms, "
            "0 errors", "met": met}


def ratios(cells: list[dict]) -> dict:
    """Every target whose cells this run measured (`--only` runs a part), from cells of the same run (c=8 unless
    named)."""
    measured = {c["system"] for c in cells}
    found = {}
    if {KILN_REST_UNLOGGED, KILN_REST_UNLOGGED_AGAIN, KILN_REST_LOGGED_SOME, KILN_REST_LOGGED_ALL} <= measured:
        found.update(_request_log_ratios(cells))
    if KILN_REST_X2 in measured:
        found.update(_throughput_ratios(cells))
    return found


def _request_log_ratios(cells: list[dict]) -> dict:
    """Logged / not logged on the same server; the baseline is the mean of the cells measured before and after
    the logged ones, so a drift of the machine during the section does not pass for the logger's cost."""
    before, after = cell(cells, KILN_REST_UNLOGGED, 8), cell(cells, KILN_REST_UNLOGGED_AGAIN, 8)
    baseline = {"req_per_s": (before["req_per_s"] + after["req_per_s"]) / 2, "errors": before["errors"] + after["errors"]}
    return {
        "request_log_some_vs_off": _ratio("request log at sampling_rate 0.1 / off, same server (req/s, REST c=8)",
                                          cell(cells, KILN_REST_LOGGED_SOME, 8), baseline, REQUEST_LOG_SOME_TARGET),
        "request_log_all_vs_off": _ratio("request log at sampling_rate 1.0 / off, same server (req/s, REST c=8)",
                                         cell(cells, KILN_REST_LOGGED_ALL, 8), baseline, REQUEST_LOG_ALL_TARGET),
    }


def _throughput_ratios(cells: list[dict]) -> dict:
    at8 = {system: cell(cells, system, 8) for system in {c["system"] for c in cells if c["concurrency"] == 8}}
    return {
        "demo_x2_vs_in_process": _ratio("demo CNN: kiln REST x2 processes / in-process (req/s, c=8)",
                                        at8[KILN_REST_X2], at8[IN_PROCESS], IN_PROCESS_RATIO_TARGET),
        "image_x2_vs_in_process": _ratio("image CNN: kiln REST x2 processes / in-process (req/s, c=8)",
                                         at8[KILN_REST_NESTED_X2], at8[IN_PROCESS_NESTED], IN_PROCESS_RATIO_TARGET),
        "demo_one_process_vs_in_process": _ratio("demo CNN: kiln REST one process / in-process (req/s, c=8)",
                                                 at8[KILN_REST], at8[IN_PROCESS], IN_PROCESS_RATIO_TARGET),
        "image_one_process_vs_in_process": _ratio("image CNN: kiln REST one process / in-process (req/s, c=8)",
                                                  at8[KILN_REST_NESTED], at8[IN_PROCESS_NESTED],
                                                  IN_PROCESS_RATIO_TARGET),
        "demo_x2_vs_mlflow": _ratio("demo CNN: kiln REST x2 processes / mlflow (req/s, c=8)", at8[KILN_REST_X2],
                                    at8[MLFLOW], MLFLOW_RATIO_TARGET),
        "demo_one_process_vs_mlflow": _ratio("demo CNN: kiln REST one process / mlflow (req/s, c=8)",
                                             at8[KILN_REST], at8[MLFLOW], MLFLOW_RATIO_TARGET),
        "tflite_vs_saved_model": _ratio("demo CNN: --prefer_tflite_model (dynamic range) / SavedModel, one process "
                                        "(req/s, c=8)", at8[KILN_REST_TFLITE], at8[KILN_REST], TFLITE_RATIO_TARGET),
        "rest_batching_c32": _ratio("REST c=32: batching / no batching (req/s)", cell(cells, KILN_REST_BATCHED, 32),
                                    cell(cells, KILN_REST, 32), BATCHING_RATIO_TARGET),
        "grpc_batching_c32": _ratio("gRPC c=32: batching / no batching (req/s)", cell(cells, KILN_GRPC_BATCHED, 32),
                                    cell(cells, KILN_GRPC, 32), BATCHING_RATIO_TARGET),
        "tails_at_c8": [_tail(system, at8[system]) for system in (
            KILN_REST_X2, KILN_REST_NESTED_X2, KILN_REST, KILN_REST_NESTED, KILN_REST_NESTED_RELOADED)],
    }


def print_report(console: Console, report: dict, duration: float) -> None:
    machine = report["machine"]
    table = Table(title=f"serving benchmark: batch-1 requests, {duration:g} s per cell "
                        f"({machine['cores']} cores, {machine['platform']})")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "system" else "right")
    for row in rows(report["cells"]):
        table.add_row(*row)
    console.print(table)
    for line in summary_lines(report):
        console.print(line)
    print()
    print(markdown_table(report))


COLUMNS = ("system", "c", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "server CPU %", "client CPU %")


def summary_lines(report: dict) -> list[str]:
    lines = []
    for key, ratio in report["ratios"].items():
        if key == "tails_at_c8":
            for tail in ratio:
                lines.append(f"{tail['name']} at c=8: p99 {tail['p99_ms']} ms, p99.9 {tail['p999_ms']} ms, "
                             f"{tail['errors']} errors ({tail['target']}): {'met' if tail['met'] else 'MISSED'}")
        else:
            lines.append(f"{ratio['name']}: {ratio['value']}x (target >= {ratio['target']}x): "
                         f"{'met' if ratio['met'] else 'MISSED'} {ratio['note']}".rstrip())
    for echo in (ECHO_REST, ECHO_GRPC):
        if not any(c["system"] == echo for c in report["cells"]):
            continue
        ceiling = cell(report["cells"], echo, 32)
        lines.append(f"load generator, {echo.split(': ')[1]} at c=32: {ceiling['req_per_s']:.0f} req/s, "
                     f"{ceiling['client_cpu_us_per_request']} µs client CPU per request")
    for model, records in report.get("request_log_records", {}).items():
        lines.append(f"request log of {model}: {records['records']} records in {records['files']} files for "
                     f"{records['requests']} timed requests (its warmup and check requests besides)")
    for server, rss in report["server_rss_kib"].items():
        per_process = rss.get("per_process")
        each = f"; per serving process {', '.join(f'{p / 1024:.0f}' for p in per_process)} MiB" if per_process else ""
        lines.append(f"RSS {server} (process tree): idle {rss['idle'] / 1024:.0f} MiB, "
                     f"after load {rss['after_load'] / 1024:.0f} MiB{each}")
    lines.append(f"load average before {report['load_average_before']}, after {report['load_average_after']}")
    return lines


def markdown_table(report: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "--:|" * (len(COLUMNS) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(report["cells"])]
    lines.append("")
    lines += [f"- {line}" for line in summary_lines(report)]
    machine = report["machine"]
    lines.append("- CPU % is of one core; server = the server's process tree, client = the load generator "
                 "(for the in-process rows: the model itself)")
    lines.append(f"- machine: {machine['cores']} cores, {machine['cpu_model']}, {machine['platform']}")
    return "\n".join(lines)


def rows(cells: list[dict]) -> list[tuple[str, ...]]:
    def number(value, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return [(c["system"], str(c["concurrency"]), number(c["req_per_s"], 0), number(c.get("p50_ms"), 2),
             number(c.get("p99_ms"), 2), number(c.get("p999_ms"), 2),
             str(c["errors"]) if not c["errors"] else f"{c['errors']} (errors!)",
             number(c.get("server_cpu_percent_of_core"), 0), number(c["client_cpu_percent_of_core"], 0))
            for c in cells]
