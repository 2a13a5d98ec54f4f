"""Serving benchmark: kiln-model-server (REST and gRPC; one process and --kiln_server_processes=2; batching;
--prefer_tflite_model) against the in-process model and `mlflow models serve`, at concurrency 1, 8 and 32, on
two models: the demo's digits CNN (a flat row of 64 pixels) and a CNN over nested [8, 8, 1] images.

By default the demo model is built here, by the real pipeline steps (ingest, validate, transform, train) run as
plain functions in a temp KILN_HOME; `--saved-model` / `--mlflow-model` reuse existing ones. The image CNN is
trained briefly on the same digits. Load comes from a separate closed-loop generator process
(`serving_load.py`), whose own ceiling and CPU cost are measured against trivial echo servers and reported.
Servers bind 127.0.0.1 on free ports and are always stopped. After its cells, the one-process server gets a
new version of the image model (a reload: load, unload, heap freeze) and its c=8 cell runs again.

Targets (issue 13; `serving_report.py` computes them): at c=8, batch-1 REST, for both models: p99 <= 20 ms,
p99.9 <= 40 ms, req/s >= 0.5x the in-process `serving_default` rate of the same model, zero errors; demo REST
>= 20x `mlflow models serve`; --prefer_tflite_model on the demo >= 1.5x the SavedModel path; batching at c=32
>= 1.5x without. Prints a table, the ratios and a Markdown table; writes bench/results/serving.json (a `--quick`
smoke run writes into its temp folder unless `--out` is given). Exit code 1 if a cell had errors.

Request logging (issue 22; `--only request-logging` runs just this part): one server serves the demo model under
three names, not logged, logged at sampling_rate 0.1 and at 1.0 (TFRecord files, as `serving.request_log` writes
them); REST c=8, off / 0.1 / 1.0 / off again. Targets: >= 0.95x and >= 0.80x the req/s of the mean off cell.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this script

import serving_model  # noqa: E402
import serving_report  # noqa: E402
from serving_procs import (  # noqa: E402
    HOST,
    VENV_BIN,
    BenchError,
    echo_server,
    http_get_ok,
    http_post_json,
    process_rss_kib,
    run_load,
    server_process,
    tree_rss_kib,
)
from serving_report import (  # noqa: E402
    ECHO_GRPC,
    ECHO_REST,
    IN_PROCESS,
    IN_PROCESS_NESTED,
    KILN_GRPC,
    KILN_GRPC_BATCHED,
    KILN_GRPC_X2,
    KILN_REST,
    KILN_REST_BATCHED,
    KILN_REST_LOGGED_ALL,
    KILN_REST_LOGGED_SOME,
    KILN_REST_NESTED,
    KILN_REST_NESTED_RELOADED,
    KILN_REST_NESTED_X2,
    KILN_REST_TFLITE,
    KILN_REST_TFLITE_FLOAT,
    KILN_REST_UNLOGGED,
    KILN_REST_UNLOGGED_AGAIN,
    KILN_REST_X2,
    MLFLOW,
)

from common.processes import free_port  # noqa: E402

MODEL_NAME = "digits"
NESTED_MODEL = "digits_nested"
FLOAT_TFLITE_MODEL = "digits_float_tflite"
TFLITE_CONVERSION = "dynamic_range"  # the optimize step's int8-weight variant
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
CONCURRENCIES = (1, 8, 32)
BATCHING_PARAMETERS = """\
max_batch_size { value: 32 }
batch_timeout_micros { value: 1000 }
max_enqueued_batches { value: 100 }
num_batch_threads { value: 2 }
"""
# The request-logging section: the demo model's names in it, with their sampling rates (None: not logged).
LOGGED_MODELS = {"digits_unlogged": None, "digits_log_some": 0.1, "digits_log_all": 1.0}
RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved-model", type=Path, help="use this SavedModel instead of training one")
    parser.add_argument("--mlflow-model", type=Path, help="use this MLflow model folder for baseline (b)")
    parser.add_argument("--duration", type=float, default=5.0, help="timed seconds per cell (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 training epoch, 0.5 s cells")
    parser.add_argument("--out", type=Path, help=f"results JSON (default {RESULTS}; temp folder with --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (models, server logs)")
    parser.add_argument("--only", choices=["request-logging"], help="run only this part (results in a temp folder "
                                                                    "unless --out is given)")
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
    out = args.out or (RESULTS if not (args.quick or args.only) else None)
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
        self.memory: dict[str, dict] = {}
        self.request_log_records: dict[str, dict] = {}

    def log(self, text: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")

    def run(self) -> dict:
        started = time.monotonic()
        load_before = _loadavg()
        if self.args.only == "request-logging":
            saved_model, pixels = self.prepare_demo_model()
            self.bench_request_logging(saved_model, Requests(pixels))
        else:
            self.bench_everything()
        report = {
            "machine": _machine(),
            "load_average_before": load_before,
            "load_average_after": _loadavg(),
            "settings": {"duration_seconds": self.duration, **self.warmup, "concurrencies": list(CONCURRENCIES),
                         "batching_parameters": BATCHING_PARAMETERS, "tflite_conversion": TFLITE_CONVERSION,
                         "quick": self.args.quick, "only": self.args.only,
                         "epochs": 1 if self.args.quick else "pipeline default"},
            "cells": self.cells,
            "server_rss_kib": self.memory,
            "request_log_records": self.request_log_records,
            "ratios": serving_report.ratios(self.cells),
            "total_seconds": round(time.monotonic() - started, 1),
        }
        serving_report.print_report(self.console, report, self.duration)
        return report

    def bench_everything(self) -> None:
        saved_model, nested_model, mlflow_model, pixels = self.prepare_models()
        models = self.work / "models"
        version = serving_model.install_version(saved_model, models / MODEL_NAME)
        serving_model.write_tflite(saved_model, version, TFLITE_CONVERSION)
        float_version = serving_model.install_version(saved_model, models / FLOAT_TFLITE_MODEL)
        serving_model.write_tflite(saved_model, float_version, "float32")
        serving_model.install_version(nested_model, models / NESTED_MODEL)
        requests = Requests(pixels)
        self.measure_client_ceiling(requests)
        self.log(IN_PROCESS)
        self.add_cells(IN_PROCESS, run_load({"kind": "inprocess", "saved_model": str(saved_model),
                                             "input": serving_model.INPUT, "instance": pixels,
                                             **self.job_timing()}, self.load_timeout()))
        self.log(IN_PROCESS_NESTED)
        self.add_cells(IN_PROCESS_NESTED, run_load({"kind": "inprocess", "saved_model": str(nested_model),
                                                    "input": serving_model.NESTED_INPUT,
                                                    "instance": serving_model.as_image(pixels),
                                                    **self.job_timing()}, self.load_timeout()))
        plain = self.config_file("plain", {MODEL_NAME: models / MODEL_NAME, NESTED_MODEL: models / NESTED_MODEL})
        self.bench_kiln("one process", [f"--model_config_file={plain}"], requests, {
            KILN_REST: ("rest", MODEL_NAME), KILN_GRPC: ("grpc", MODEL_NAME), KILN_REST_NESTED: ("rest", NESTED_MODEL)},
            reload_nested=models / NESTED_MODEL)
        self.bench_kiln("2 processes", [f"--model_config_file={plain}", "--kiln_server_processes=2"], requests, {
            KILN_REST_X2: ("rest", MODEL_NAME), KILN_GRPC_X2: ("grpc", MODEL_NAME),
            KILN_REST_NESTED_X2: ("rest", NESTED_MODEL)})
        params = self.work / "batching_parameters.txt"
        params.write_text(BATCHING_PARAMETERS)
        self.bench_kiln("batching", [f"--model_config_file={plain}", "--enable_batching",
                                     f"--batching_parameters_file={params}"], requests, {
            KILN_REST_BATCHED: ("rest", MODEL_NAME), KILN_GRPC_BATCHED: ("grpc", MODEL_NAME)})
        lite = self.config_file("tflite", {MODEL_NAME: models / MODEL_NAME,
                                           FLOAT_TFLITE_MODEL: models / FLOAT_TFLITE_MODEL})
        self.bench_kiln("--prefer_tflite_model", [f"--model_config_file={lite}", "--prefer_tflite_model"], requests, {
            KILN_REST_TFLITE: ("rest", MODEL_NAME), KILN_REST_TFLITE_FLOAT: ("rest", FLOAT_TFLITE_MODEL)})
        self.bench_mlflow(mlflow_model, requests)
        self.bench_request_logging(saved_model, requests)

    # --- setup -------------------------------------------------------------------------------------

    def prepare_demo_model(self) -> tuple[Path, list[float]]:
        home = self.work / "home"
        saved_model = self.args.saved_model
        if saved_model is None:
            self.log("training the digits CNN with the pipeline steps (ingest, validate, transform, train)")
            saved_model = serving_model.build_saved_model(home, epochs=1 if self.args.quick else None)
        return saved_model.resolve(), serving_model.sample_pixels(home)

    def prepare_models(self) -> tuple[Path, Path, Path, list[float]]:
        home = self.work / "home"
        saved_model, pixels = self.prepare_demo_model()
        self.log("training the image CNN (nested [8, 8, 1] input)")
        nested = serving_model.build_nested_saved_model(self.work / "nested_model", home / serving_model.DATA_FILE,
                                                        epochs=1 if self.args.quick else 3)
        mlflow_model = self.args.mlflow_model
        if mlflow_model is None:
            self.log("writing the MLflow model (mlflow.tensorflow.save_model of the tf_keras model)")
            mlflow_model = serving_model.write_mlflow_model(saved_model, self.work / "mlflow_model")
        return saved_model, nested.resolve(), mlflow_model.resolve(), pixels

    def config_file(self, name: str, models: dict[str, Path]) -> Path:
        entries = "".join(f'  config {{ name: "{model}" base_path: "{path}" model_platform: "tensorflow" }}\n'
                          for model, path in models.items())
        path = self.work / f"{name}.config"
        path.write_text(f"model_config_list {{\n{entries}}}\n")
        return path

    def job_timing(self, concurrencies: tuple[int, ...] = CONCURRENCIES) -> dict:
        return {"concurrencies": list(concurrencies), "duration": self.duration, **self.warmup}

    def load_timeout(self) -> float:
        per_cell = self.duration + self.warmup["warmup_seconds"] + 30
        return 60 + per_cell * len(CONCURRENCIES)

    def add_cells(self, system: str, results: list[dict], concurrencies: tuple[int, ...] = CONCURRENCIES) -> None:
        for concurrency, result in zip(concurrencies, results, strict=True):
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

    def bench_kiln(self, label: str, flags: list[str], requests: Requests, systems: dict[str, tuple[str, str]],
                   reload_nested: Path | None = None) -> None:
        """One server with `flags`; each system is (protocol, model) measured at every concurrency."""
        grpc_port, rest_port = free_port(), free_port()
        argv = [str(VENV_BIN / "kiln-model-server"), f"--port={grpc_port}", f"--rest_api_port={rest_port}", *flags]
        self.log(f"kiln-model-server ({label})")
        log_path = self.work / f"kiln-model-server-{label.strip('-').replace(' ', '-')}.log"
        ready = f"http://{HOST}:{rest_port}/v1/models/{MODEL_NAME}"
        with server_process("kiln-model-server", argv, log_path, lambda: http_get_ok(ready, "AVAILABLE")) as proc:
            for _, model in systems.values():
                check_kiln_rest(rest_port, requests, model)
            if any(protocol == "grpc" for protocol, _ in systems.values()):
                check_kiln_grpc(grpc_port, requests)
            _wait_for_all_processes(proc.pid, flags)
            idle = tree_rss_kib(proc.pid)
            for system, (protocol, model) in systems.items():
                self.add_cells(system, run_load(self.kiln_job(protocol, model, requests, grpc_port, rest_port, proc.pid),
                                                self.load_timeout()))
            if reload_nested is not None:
                self.reload_and_measure(reload_nested, requests, rest_port, proc.pid)
            self.memory[f"kiln-model-server ({label})"] = {
                "idle": idle, "after_load": tree_rss_kib(proc.pid),
                "per_process": [process_rss_kib(pid) for pid in _server_processes(proc.pid)]}

    def kiln_job(self, protocol: str, model: str, requests: Requests, grpc_port: int, rest_port: int, pid: int,
                 concurrencies: tuple[int, ...] = CONCURRENCIES) -> dict:
        if protocol == "rest":
            return {"kind": "rest", "host": HOST, "port": rest_port, "server_pid": pid,
                    "request_b64": _b64(requests.rest(model)), **self.job_timing(concurrencies)}
        return {"kind": "grpc", "host": HOST, "port": grpc_port, "server_pid": pid, "method": PREDICT_METHOD,
                "request_b64": _b64(requests.grpc), **self.job_timing(concurrencies)}

    def reload_and_measure(self, base: Path, requests: Requests, rest_port: int, pid: int) -> None:
        """A new version of the image model: the server loads it, unloads version 1 and freezes its heap again;
        then the c=8 cell runs once more, to show that the tail stays short after a reload."""
        self.log("new version of the image model; measuring c=8 again after the reload")
        serving_model.install_version(base / "1", base, version=2)
        deadline = time.monotonic() + 120
        status = f"http://{HOST}:{rest_port}/v1/models/{NESTED_MODEL}/versions/2"
        while not http_get_ok(status, "AVAILABLE"):
            if time.monotonic() > deadline:
                raise BenchError("version 2 of the image model did not become AVAILABLE in 120 s")
            time.sleep(0.2)
        time.sleep(2)  # version 1 unloads and the heap is frozen after version 2 is AVAILABLE
        self.add_cells(KILN_REST_NESTED_RELOADED,
                       run_load(self.kiln_job("rest", NESTED_MODEL, requests, 0, rest_port, pid, (8,)),
                                self.load_timeout()), (8,))

    def bench_request_logging(self, saved_model: Path, requests: Requests) -> None:
        """The demo model under three names in one server, not logged and logged at two sampling rates; REST c=8
        in the order off, 0.1, 1.0, off again. Then the records each logged name wrote, counted from its files
        (closed when the server stops)."""
        logs = self.work / "request-logs"
        entries = []
        for model, rate in LOGGED_MODELS.items():
            serving_model.install_version(saved_model, self.work / "logged-models" / model)
            logging = "" if rate is None else (
                f' logging_config {{ log_collector_config {{ type: "file" filename_prefix: "{logs}" }}'
                f" sampling_config {{ sampling_rate: {rate} }} }}")
            entries.append(f'  config {{ name: "{model}" base_path: "{self.work / "logged-models" / model}" '
                           f'model_platform: "tensorflow"{logging} }}\n')
        config = self.work / "request-logging.config"
        config.write_text("model_config_list {\n" + "".join(entries) + "}\n")
        grpc_port, rest_port = free_port(), free_port()
        argv = [str(VENV_BIN / "kiln-model-server"), f"--port={grpc_port}", f"--rest_api_port={rest_port}",
                f"--model_config_file={config}"]
        self.log("kiln-model-server (request logging: off, 0.1, 1.0, off again)")
        ready = f"http://{HOST}:{rest_port}/v1/models/digits_log_all"
        order = [(KILN_REST_UNLOGGED, "digits_unlogged"), (KILN_REST_LOGGED_SOME, "digits_log_some"),
                 (KILN_REST_LOGGED_ALL, "digits_log_all"), (KILN_REST_UNLOGGED_AGAIN, "digits_unlogged")]
        requests_sent = {model: 0 for model in LOGGED_MODELS}
        with server_process("kiln-model-server", argv, self.work / "kiln-model-server-request-logging.log",
                            lambda: http_get_ok(ready, "AVAILABLE")) as proc:
            for _, model in order:
                check_kiln_rest(rest_port, requests, model)
            for system, model in order:
                [result] = run_load(self.kiln_job("rest", model, requests, grpc_port, rest_port, proc.pid, (8,)),
                                    self.load_timeout())
                self.add_cells(system, [result], (8,))
                requests_sent[model] += result["requests"]
        for model, rate in LOGGED_MODELS.items():
            if rate is not None:
                self.request_log_records[model] = {"sampling_rate": rate, **_count_records(logs / model),
                                                   "requests": requests_sent[model]}
        if not self.request_log_records["digits_log_all"]["records"]:
            raise BenchError(f"the request log at sampling_rate 1.0 wrote no records under {logs}")

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


def _server_processes(pid: int) -> list[int]:
    """The serving processes: the server itself, or with --kiln_server_processes its children."""
    from serving_procs import process_tree

    children = [member for member in process_tree(pid) if member != pid]
    return children or [pid]


def _wait_for_all_processes(pid: int, flags: list[str], timeout: float = 180) -> None:
    """With --kiln_server_processes=N the first process answers before the others have loaded: wait for all."""
    wanted = next((int(flag.split("=")[1]) for flag in flags if flag.startswith("--kiln_server_processes=")), 1)
    deadline = time.monotonic() + timeout
    while wanted > 1 and len(_listening_processes(pid)) < wanted:
        if time.monotonic() > deadline:
            raise BenchError(f"only {len(_listening_processes(pid))} of {wanted} server processes started")
        time.sleep(0.5)


def _listening_processes(pid: int) -> list[int]:
    import psutil

    listening = []
    for member in _server_processes(pid):
        try:
            if any(c.status == psutil.CONN_LISTEN for c in psutil.Process(member).net_connections(kind="tcp")):
                listening.append(member)
        except psutil.Error:
            pass
    return listening


class Requests:
    """Pre-encoded requests for one real digit, plus realistic answers for the echo servers."""

    def __init__(self, pixels: list[float]):
        import numpy as np
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        self.pixels = pixels
        self.body = json.dumps({"instances": [pixels]}).encode()
        self.nested_body = json.dumps({"instances": [serving_model.as_image(pixels)]}).encode()
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

    def _http(self, path: str, body: bytes) -> bytes:
        head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n")
        return head.encode() + body

    def body_for(self, model: str) -> bytes:
        return self.nested_body if model == NESTED_MODEL else self.body

    def rest(self, model: str) -> bytes:
        return self._http(f"/v1/models/{model}:predict", self.body_for(model))

    def rest_invocations(self) -> bytes:
        return self._http("/invocations", self.body)


def check_kiln_rest(port: int, requests: Requests, model: str = MODEL_NAME) -> None:
    status, answer = http_post_json(f"http://{HOST}:{port}/v1/models/{model}:predict", requests.body_for(model))
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


def _count_records(folder: Path) -> dict:
    """The closed request-log files under a model's folder and the PredictionLog records in them (the warmup
    and check requests included)."""
    import tensorflow as tf

    files = sorted(folder.rglob("*.tfrecord"))
    records = sum(1 for path in files for _ in tf.data.TFRecordDataset(str(path)))
    return {"files": len(files), "records": records}


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
