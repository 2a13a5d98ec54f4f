"""Serving benchmark: kiln-model-server (REST and gRPC, batching off and on) against the in-process model and
`mlflow models serve`, all on the same digits CNN, at concurrency 1, 8 and 32.

By default the model is built here, by the real pipeline steps (ingest, validate, transform, train) run as
plain functions in a temp KILN_HOME; `--saved-model` / `--mlflow-model` reuse existing ones. Load comes from
a separate closed-loop generator process (`serving_load.py`), whose own ceiling and CPU cost are measured
against trivial echo servers and reported. Servers bind 127.0.0.1 on free ports and are always stopped.

Targets: kiln REST req/s at c=8 >= 20x mlflow's; with batching, req/s at c=32 >= 1.5x without (REST and
gRPC). Prints a table, the ratios and a Markdown table; writes bench/results/serving.json (a `--quick`
smoke run writes into its temp folder unless `--out` is given). Exit code 1 if a cell had errors.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this script

import serving_model  # noqa: E402
from serving_procs import (  # noqa: E402
    HOST,
    VENV_BIN,
    BenchError,
    echo_server,
    http_get_ok,
    http_post_json,
    run_load,
    server_process,
    tree_rss_kib,
)

from infra.processes import free_port  # noqa: E402

MODEL_NAME = "digits"
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
CONCURRENCIES = (1, 8, 32)
BATCHING_PARAMETERS = """\
max_batch_size { value: 32 }
batch_timeout_micros { value: 1000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
"""
MLFLOW_RATIO_TARGET = 20.0
BATCHING_RATIO_TARGET = 1.5
RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"

# Display names of the systems, in table order.
ECHO_REST, ECHO_GRPC = "client ceiling: REST echo", "client ceiling: gRPC echo"
IN_PROCESS = "in-process serving_default (batch 1)"
KILN_REST, KILN_GRPC = "kiln REST", "kiln gRPC"
KILN_REST_BATCHED, KILN_GRPC_BATCHED = "kiln REST + batching", "kiln gRPC + batching"
MLFLOW = "mlflow models serve"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved-model", type=Path, help="use this SavedModel instead of training one")
    parser.add_argument("--mlflow-model", type=Path, help="use this MLflow model folder for baseline (b)")
    parser.add_argument("--duration", type=float, default=5.0, help="timed seconds per cell (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 training epoch, 0.5 s cells")
    parser.add_argument("--out", type=Path, help=f"results JSON (default {RESULTS}; temp folder with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (models, server logs)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    for option, path in (("--saved-model", args.saved_model), ("--mlflow-model", args.mlflow_model)):
        if path is not None and not path.is_dir():
            print(f"{option} {path}: not a folder", file=sys.stderr)
            return 2
    if args.saved_model is not None and not (args.saved_model / "saved_model.pb").exists():
        print(f"--saved-model {args.saved_model}: no saved_model.pb in it", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="kiln-serving-bench-")).resolve()
    console = Console()
    try:
        report = Bench(args, work, console).run()
    except BenchError as exc:
        console.print(f"[red]serving bench failed:[/red] {exc}")
        return 1
    finally:
        if args.keep:
            console.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = args.out or (RESULTS if not args.quick else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"wrote {out}")
    return 1 if any(cell["errors"] for cell in report["cells"]) else 0


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, console: Console):
        self.args, self.work, self.console = args, work, console
        self.duration = 0.5 if args.quick and args.duration == 5.0 else args.duration
        self.warmup = {"warmup_requests": 30, "warmup_seconds": 0.3} if args.quick else \
            {"warmup_requests": 300, "warmup_seconds": 3.0}
        self.cells: list[dict] = []
        self.memory: dict[str, dict[str, int]] = {}

    def log(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")

    def run(self) -> dict:
        started = time.monotonic()
        load_before = _loadavg()
        saved_model, mlflow_model, pixels = self.prepare_models()
        model_base = self.work / "models" / MODEL_NAME
        serving_model.install_version(saved_model, model_base)
        requests = Requests(pixels)
        self.measure_client_ceiling(requests)
        self.log(f"{IN_PROCESS}")
        self.add_cells(IN_PROCESS, run_load({"kind": "inprocess", "saved_model": str(saved_model),
                                             "pixels": pixels, **self.job_timing()}, self.load_timeout()))
        self.bench_kiln(model_base, requests, batching=False)
        self.bench_kiln(model_base, requests, batching=True)
        self.bench_mlflow(mlflow_model, requests)
        report = {
            "machine": _machine(),
            "load_average_before": load_before,
            "load_average_after": _loadavg(),
            "settings": {"duration_seconds": self.duration, **self.warmup, "concurrencies": list(CONCURRENCIES),
                         "batching_parameters": BATCHING_PARAMETERS, "quick": self.args.quick,
                         "epochs": 1 if self.args.quick else "pipeline default"},
            "cells": self.cells,
            "server_rss_kib": self.memory,
            "ratios": self.ratios(),
            "total_seconds": round(time.monotonic() - started, 1),
        }
        self.print_report(report)
        return report

    # --- setup -------------------------------------------------------------------------------------

    def prepare_models(self) -> tuple[Path, Path, list[float]]:
        home = self.work / "home"
        saved_model = self.args.saved_model
        if saved_model is None:
            self.log("training the digits CNN with the pipeline steps (ingest, validate, transform, train)")
            saved_model = serving_model.build_saved_model(home, epochs=1 if self.args.quick else None)
        mlflow_model = self.args.mlflow_model
        if mlflow_model is None:
            self.log("writing the MLflow model (mlflow.tensorflow.save_model of the tf_keras model)")
            mlflow_model = serving_model.write_mlflow_model(saved_model, self.work / "mlflow_model")
        return saved_model.resolve(), mlflow_model.resolve(), serving_model.sample_pixels(home)

    def job_timing(self) -> dict:
        return {"concurrencies": list(CONCURRENCIES), "duration": self.duration, **self.warmup}

    def load_timeout(self) -> float:
        per_cell = self.duration + self.warmup["warmup_seconds"] + 30
        return 60 + per_cell * len(CONCURRENCIES)

    def add_cells(self, system: str, results: list[dict]) -> None:
        for concurrency, result in zip(CONCURRENCIES, results, strict=True):
            self.cells.append({"system": system, "concurrency": concurrency, **result})

    # --- measurements ------------------------------------------------------------------------------

    def measure_client_ceiling(self, requests: Requests) -> None:
        """The load generator against servers that do nothing: how fast it can go, and its CPU per request."""
        self.log("client ceiling against trivial echo servers")
        with echo_server({"kind": "rest-echo", "response_b64": _b64(requests.rest_response_sample)}) as port:
            self.add_cells(ECHO_REST, run_load({"kind": "rest", "host": HOST, "port": port,
                                                "request_b64": _b64(requests.rest(MODEL_NAME)),
                                                **self.job_timing()}, self.load_timeout()))
        with echo_server({"kind": "grpc-echo", "method": PREDICT_METHOD,
                          "response_b64": _b64(requests.grpc_response_sample)}) as port:
            self.add_cells(ECHO_GRPC, run_load({"kind": "grpc", "host": HOST, "port": port, "method": PREDICT_METHOD,
                                                "request_b64": _b64(requests.grpc), **self.job_timing()},
                                               self.load_timeout()))

    def bench_kiln(self, model_base: Path, requests: Requests, batching: bool) -> None:
        grpc_port, rest_port = free_port(), free_port()
        argv = [str(VENV_BIN / "kiln-model-server"), f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                f"--model_name={MODEL_NAME}", f"--model_base_path={model_base}"]
        label = "batching" if batching else "no batching"
        if batching:
            params = self.work / "batching_parameters.txt"
            params.write_text(BATCHING_PARAMETERS)
            argv += ["--enable_batching", f"--batching_parameters_file={params}"]
        status_url = f"http://{HOST}:{rest_port}/v1/models/{MODEL_NAME}"
        self.log(f"kiln-model-server ({label})")
        log_path = self.work / f"kiln-model-server-{'batching' if batching else 'plain'}.log"
        with server_process("kiln-model-server", argv, log_path, lambda: http_get_ok(status_url, "AVAILABLE")) as proc:
            check_kiln_rest(rest_port, requests)
            check_kiln_grpc(grpc_port, requests)
            idle = tree_rss_kib(proc.pid)
            rest_name, grpc_name = (KILN_REST_BATCHED, KILN_GRPC_BATCHED) if batching else (KILN_REST, KILN_GRPC)
            self.add_cells(rest_name, run_load({"kind": "rest", "host": HOST, "port": rest_port, "server_pid": proc.pid,
                                                "request_b64": _b64(requests.rest(MODEL_NAME)),
                                                **self.job_timing()}, self.load_timeout()))
            self.add_cells(grpc_name, run_load({"kind": "grpc", "host": HOST, "port": grpc_port, "server_pid": proc.pid,
                                                "method": PREDICT_METHOD, "request_b64": _b64(requests.grpc),
                                                **self.job_timing()}, self.load_timeout()))
            self.memory[f"kiln-model-server ({label})"] = {"idle": idle, "after_load": tree_rss_kib(proc.pid)}

    def bench_mlflow(self, mlflow_model: Path, requests: Requests) -> None:
        port = free_port()
        argv = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", str(mlflow_model), "--env-manager", "local",
                "--host", HOST, "--port", str(port)]
        self.log("mlflow models serve")
        with server_process("mlflow models serve", argv, self.work / "mlflow-serve.log",
                            lambda: http_get_ok(f"http://{HOST}:{port}/ping")) as proc:
            status, answer = http_post_json(f"http://{HOST}:{port}/invocations", requests.body)
            predictions = answer.get("predictions")
            if status != 200 or not predictions or len(predictions[0]) != 10:
                raise BenchError(f"mlflow models serve answered {status} {str(answer)[:200]}; expected 10 probabilities")
            idle = tree_rss_kib(proc.pid)
            self.add_cells(MLFLOW, run_load({"kind": "rest", "host": HOST, "port": port, "server_pid": proc.pid,
                                             "request_b64": _b64(requests.rest_invocations()),
                                             **self.job_timing()}, self.load_timeout()))
            self.memory["mlflow models serve"] = {"idle": idle, "after_load": tree_rss_kib(proc.pid)}

    # --- report ------------------------------------------------------------------------------------

    def cell(self, system: str, concurrency: int) -> dict:
        return next(c for c in self.cells if c["system"] == system and c["concurrency"] == concurrency)

    def ratios(self) -> dict:
        def ratio(name: str, numerator: dict, denominator: dict, target: float) -> dict:
            value = numerator["req_per_s"] / denominator["req_per_s"] if denominator["req_per_s"] else None
            clean = not numerator["errors"] and not denominator["errors"]
            return {"name": name, "value": round(value, 2) if value is not None else None, "target": target,
                    "met": bool(clean and value is not None and value >= target),
                    "note": "" if clean else "a cell had errors"}

        return {
            "rest_c8_vs_mlflow_c8": ratio("kiln REST c=8 / mlflow c=8 (req/s)", self.cell(KILN_REST, 8),
                                          self.cell(MLFLOW, 8), MLFLOW_RATIO_TARGET),
            "rest_batching_c32": ratio("REST c=32: batching / no batching (req/s)", self.cell(KILN_REST_BATCHED, 32),
                                       self.cell(KILN_REST, 32), BATCHING_RATIO_TARGET),
            "grpc_batching_c32": ratio("gRPC c=32: batching / no batching (req/s)", self.cell(KILN_GRPC_BATCHED, 32),
                                       self.cell(KILN_GRPC, 32), BATCHING_RATIO_TARGET),
            "p99_ms_at_c8": {system: self.cell(system, 8).get("p99_ms")
                             for system in (KILN_REST, KILN_GRPC, KILN_REST_BATCHED, KILN_GRPC_BATCHED, MLFLOW,
                                            IN_PROCESS)},
        }

    def print_report(self, report: dict) -> None:
        machine = report["machine"]
        table = Table(title=f"serving benchmark: digits CNN, batch-1 requests, {self.duration:g} s per cell "
                            f"({machine['cores']} cores, {machine['platform']})")
        for column in ("system", "c", "req/s", "p50 ms", "p99 ms", "errors", "server CPU %", "client CPU %"):
            table.add_column(column, justify="left" if column == "system" else "right")
        for row in _rows(self.cells):
            table.add_row(*row)
        self.console.print(table)
        for ratio in report["ratios"].values():
            if "target" in ratio:
                verdict = "[green]met[/green]" if ratio["met"] else "[red]MISSED[/red]"
                self.console.print(f"{ratio['name']}: {ratio['value']}x (target >= {ratio['target']}x) {verdict} "
                                   f"{ratio['note']}")
        for echo in (ECHO_REST, ECHO_GRPC):
            ceiling = self.cell(echo, 32)
            self.console.print(f"load generator, {echo.split(': ')[1]} at c=32: {ceiling['req_per_s']:.0f} req/s, "
                               f"{ceiling['client_cpu_us_per_request']} µs client CPU per request")
        p99 = ", ".join(f"{k} {v} ms" for k, v in report["ratios"]["p99_ms_at_c8"].items())
        self.console.print(f"p99 at c=8: {p99}")
        for server, rss in report["server_rss_kib"].items():
            self.console.print(f"RSS {server} (process tree): idle {rss['idle'] / 1024:.0f} MiB, "
                               f"after load {rss['after_load'] / 1024:.0f} MiB")
        self.console.print(f"load average before {report['load_average_before']}, after "
                           f"{report['load_average_after']}")
        print()
        print(markdown_table(self.cells, report))


def markdown_table(cells: list[dict], report: dict) -> str:
    lines = ["| system | concurrency | req/s | p50 ms | p99 ms | errors | server CPU % | client CPU % |",
             "|---|--:|--:|--:|--:|--:|--:|--:|"]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(cells)]
    lines.append("")
    for ratio in report["ratios"].values():
        if "target" in ratio:
            lines.append(f"- {ratio['name']}: **{ratio['value']}x** (target ≥ {ratio['target']}x): "
                         f"{'met' if ratio['met'] else 'missed'}")
    lines.append("- CPU % is of one core (the machine has "
                 f"{report['machine']['cores']}); server = the server's process tree, client = the load generator "
                 "(for the in-process row: the model itself)")
    machine = report["machine"]
    lines.append(f"- machine: {machine['cores']} cores, {machine['cpu_model']}, {machine['platform']}; "
                 f"load average before {report['load_average_before']}, after {report['load_average_after']}")
    return "\n".join(lines)


def _rows(cells: list[dict]) -> list[tuple[str, ...]]:
    def number(value, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    return [(c["system"], str(c["concurrency"]), number(c["req_per_s"], 0), number(c.get("p50_ms"), 2),
             number(c.get("p99_ms"), 2), str(c["errors"]) if not c["errors"] else f"{c['errors']} (errors!)",
             number(c.get("server_cpu_percent_of_core"), 0), number(c["client_cpu_percent_of_core"], 0))
            for c in cells]


class Requests:
    """Pre-encoded requests for one real digit, plus realistic answers for the echo servers."""

    def __init__(self, pixels: list[float]):
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        self.pixels = pixels
        self.body = json.dumps({"instances": [pixels]}).encode()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL_NAME
        request.model_spec.signature_name = "serving_default"
        request.inputs["pixels"].CopyFrom(tf.make_tensor_proto(np.asarray([pixels], dtype=np.float32)))
        self.grpc_request = request
        self.grpc = request.SerializeToString()
        response = predict_pb2.PredictResponse()
        response.outputs["probabilities"].CopyFrom(tf.make_tensor_proto(np.full((1, 10), 0.1, np.float32)))
        response.outputs["class_id"].CopyFrom(tf.make_tensor_proto(np.zeros((1,), np.int64)))
        response.outputs["class"].CopyFrom(tf.make_tensor_proto(np.zeros((1,), np.int64)))
        self.grpc_response_sample = response.SerializeToString()
        probabilities = ", ".join(["1.23456789e-05"] * 10)
        self.rest_response_sample = (
            '{\n    "predictions": [\n        {\n            "probabilities": [' + probabilities
            + '],\n            "class_id": 0,\n            "class": 0\n        }\n    ]\n}'
        ).encode()

    def _http(self, path: str) -> bytes:
        head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\n\r\n")
        return head.encode() + self.body

    def rest(self, model: str) -> bytes:
        return self._http(f"/v1/models/{model}:predict")

    def rest_invocations(self) -> bytes:
        return self._http("/invocations")


def check_kiln_rest(port: int, requests: Requests) -> None:
    status, answer = http_post_json(f"http://{HOST}:{port}/v1/models/{MODEL_NAME}:predict", requests.body)
    predictions = answer.get("predictions")
    if status != 200 or not predictions or len(predictions[0].get("probabilities", [])) != 10:
        raise BenchError(f"kiln REST predict answered {status} {str(answer)[:200]}; expected 10 probabilities")


def check_kiln_grpc(port: int, requests: Requests) -> None:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(f"{HOST}:{port}") as channel:
        try:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(requests.grpc_request,
                                                                                        timeout=30)
        except grpc.RpcError as exc:
            raise BenchError(f"kiln gRPC Predict failed: {exc.code().name}: {exc.details()}") from None
    probabilities = response.outputs["probabilities"]
    values = len(probabilities.float_val) or len(probabilities.tensor_content) // 4
    if values != 10 or "class" not in response.outputs:
        raise BenchError(f"kiln gRPC Predict answered outputs {sorted(response.outputs)} with {values} "
                         f"probabilities; expected 10 and the class")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _machine() -> dict:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu_model": cpu_model, "platform": platform.platform(),
            "machine": platform.machine(), "python": platform.python_version()}


if __name__ == "__main__":
    raise SystemExit(main())
