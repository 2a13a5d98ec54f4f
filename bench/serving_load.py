"""Closed-loop load generator, run as its own process so it never shares the interpreter with a server.

`python bench/serving_load.py` reads one JSON job on stdin and prints one JSON result on stdout:

    {"kind": "rest", "host": "127.0.0.1", "port": 8501, "request_b64": "...", "concurrencies": [1, 8, 32],
     "duration": 5, "warmup_requests": 300, "warmup_seconds": 3}

and prints one result per concurrency (one process serves all of them: its start-up is paid once).

Kinds:
* `rest`: one keep-alive HTTP/1.1 connection per worker over `asyncio.open_connection` (uvloop), sending
  the pre-encoded request bytes and reading the response by its Content-Length (chunked is understood too).
* `grpc`: `grpc.aio` workers on one shared channel, calling the method path with a pre-serialized request
  (identity serializers: the client neither builds nor parses protos inside the timed loop).
* `inprocess`: the SavedModel's `serving_default` concrete function called at batch 1 with the job's
  `input` and `instance`, by `concurrency` threads (the baseline without any serving stack).
* `rest-echo` / `grpc-echo`: a trivial server that answers every request with fixed bytes, used to
  measure how fast this client can go at all (its ceiling) and what a request costs it in CPU.

Every worker sends, waits for the answer, and sends again. A warm-up phase (not timed) comes first; then
each worker runs until the deadline. The result holds requests, errors, req/s, latency percentiles, the
first few error texts, this process's CPU time in the timed window and, when the job names the server's
`server_pid`, the server's (process tree) CPU time in it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from serving_procs import tree_cpu_seconds

ERROR_SAMPLES = 3


@dataclass
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(text[:300])


@dataclass(frozen=True)
class Phase:
    """Workers stop at `deadline` (perf_counter) or, with a budget, once `budget` requests were started."""

    deadline: float
    budget: list[int] | None = None

    def more(self) -> bool:
        if time.perf_counter() >= self.deadline:
            return False
        if self.budget is None:
            return True
        self.budget[0] -= 1
        return self.budget[0] >= 0


class Window:
    """The timed window: wall time, this process's CPU time and, given its pid, the server's CPU time."""

    def __init__(self, server_pid: int | None):
        self.server_pid = server_pid
        self.server_cpu0 = tree_cpu_seconds(server_pid) if server_pid else 0.0
        self.cpu0, self.t0 = time.process_time(), time.perf_counter()

    def close(self, tally: Tally) -> dict:
        wall, cpu = time.perf_counter() - self.t0, time.process_time() - self.cpu0
        result = summarize(tally, wall, cpu)
        if self.server_pid:
            server_cpu = tree_cpu_seconds(self.server_pid) - self.server_cpu0
            result["server_cpu_percent_of_core"] = round(100 * server_cpu / wall, 1)
            if result["requests"]:
                result["server_cpu_us_per_request"] = round(1e6 * server_cpu / result["requests"], 1)
        return result


def summarize(tally: Tally, wall_seconds: float, cpu_seconds: float) -> dict:
    latencies = np.asarray(tally.latencies_ns, dtype=np.float64) / 1e6
    completed = len(latencies)
    result = {
        "requests": completed,
        "errors": tally.errors,
        "error_samples": tally.error_samples,
        "wall_seconds": round(wall_seconds, 3),
        "req_per_s": round(completed / wall_seconds, 1) if wall_seconds > 0 else 0.0,
        "client_cpu_seconds": round(cpu_seconds, 3),
        "client_cpu_percent_of_core": round(100 * cpu_seconds / wall_seconds, 1) if wall_seconds > 0 else 0.0,
        "client_cpu_us_per_request": round(1e6 * cpu_seconds / completed, 1) if completed else None,
    }
    if completed:
        p50, p90, p99, p999 = np.percentile(latencies, [50, 90, 99, 99.9])
        result.update(p50_ms=round(p50, 3), p90_ms=round(p90, 3), p99_ms=round(p99, 3), p999_ms=round(p999, 3),
                      mean_ms=round(float(latencies.mean()), 3), max_ms=round(float(latencies.max()), 3))
    return result


async def _run_async_phases(job: dict, concurrency: int, worker) -> dict:
    """Warm-up then timed phase, each with `concurrency` copies of `worker(phase, tally)`."""
    warm = Phase(time.perf_counter() + job["warmup_seconds"], [job["warmup_requests"]])
    await asyncio.gather(*(worker(warm, Tally()) for _ in range(concurrency)))
    tally = Tally()
    window = Window(job.get("server_pid"))
    timed = Phase(window.t0 + job["duration"])
    await asyncio.gather(*(worker(timed, tally) for _ in range(concurrency)))
    return window.close(tally)


# --- REST -------------------------------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        return status, await reader.readexactly(length)
    if not chunked:
        raise ConnectionError("response has neither Content-Length nor chunked encoding")
    body = bytearray()
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += await reader.readexactly(size)
        await reader.readexactly(2)
    await reader.readuntil(b"\r\n")  # the empty trailer line
    return status, bytes(body)


def _rest_worker(host: str, port: int, request: bytes):
    async def worker(phase: Phase, tally: Tally) -> None:
        connection = None
        while phase.more():
            started = time.perf_counter_ns()
            try:
                if connection is None:
                    connection = await asyncio.open_connection(host, port)
                reader, writer = connection
                writer.write(request)
                status, body = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                tally.error(f"{type(exc).__name__}: {exc}")
                if connection is not None:
                    connection[1].close()
                connection = None
                continue
            if status == 200:
                tally.latencies_ns.append(time.perf_counter_ns() - started)
            else:
                tally.error(f"HTTP {status}: {body[:200].decode(errors='replace')}")
        if connection is not None:
            connection[1].close()

    return worker


def run_rest(job: dict) -> list[dict]:
    request = base64.b64decode(job["request_b64"])
    worker = _rest_worker(job["host"], job["port"], request)

    async def main() -> list[dict]:
        return [await _run_async_phases(job, concurrency, worker) for concurrency in job["concurrencies"]]

    return _run_with_uvloop(main())


def _run_with_uvloop(coroutine):
    try:
        import uvloop
    except ImportError:  # plain asyncio is slower but still correct
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


# --- gRPC -------------------------------------------------------------------------------------------


def run_grpc(job: dict) -> list[dict]:
    import grpc

    request = base64.b64decode(job["request_b64"])

    async def main() -> list[dict]:
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        async with grpc.aio.insecure_channel(f"{job['host']}:{job['port']}", options=options) as channel:
            call = channel.unary_unary(job["method"])  # no serializers: bytes in, bytes out

            async def worker(phase: Phase, tally: Tally) -> None:
                while phase.more():
                    started = time.perf_counter_ns()
                    try:
                        await call(request, timeout=30)
                    except grpc.aio.AioRpcError as exc:
                        tally.error(f"{exc.code().name}: {exc.details()}")
                        continue
                    tally.latencies_ns.append(time.perf_counter_ns() - started)

            return [await _run_async_phases(job, concurrency, worker) for concurrency in job["concurrencies"]]

    return asyncio.run(main())


# --- in-process baseline ----------------------------------------------------------------------------


def run_inprocess(job: dict) -> list[dict]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tasks.models.export import load_serving_function

    fn = load_serving_function(job["saved_model"])
    instance = tf.constant(np.asarray([job["instance"]], dtype=np.float32))

    def worker(phase: Phase, tally: Tally, lock: threading.Lock) -> None:
        mine = []
        while phase.more():
            started = time.perf_counter_ns()
            outputs = fn(**{job["input"]: instance})
            for value in outputs.values():
                value.numpy()
            mine.append(time.perf_counter_ns() - started)
        with lock:
            tally.latencies_ns.extend(mine)

    def run_phase(concurrency: int, phase: Phase, tally: Tally) -> None:
        lock = threading.Lock()
        threads = [threading.Thread(target=worker, args=(phase, tally, lock)) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    results = []
    for concurrency in job["concurrencies"]:
        run_phase(concurrency, Phase(time.perf_counter() + job["warmup_seconds"], [job["warmup_requests"]]), Tally())
        tally = Tally()
        window = Window(None)
        run_phase(concurrency, Phase(window.t0 + job["duration"]), tally)
        results.append(window.close(tally))
    return results


# --- echo servers (client ceiling) -------------------------------------------------------------------


def serve_rest_echo(job: dict) -> None:
    """Answer every HTTP/1.1 request on the socket with the same fixed 200 response; print the port."""
    response_body = base64.b64decode(job["response_b64"])
    response = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(response_body)).encode() + b"\r\n\r\n" + response_body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(response)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin

    _run_with_uvloop(main())


def serve_grpc_echo(job: dict) -> None:
    import grpc

    response = base64.b64decode(job["response_b64"])
    service, _, method = job["method"].strip("/").partition("/")

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            service, {method: grpc.unary_unary_rpc_method_handler(_echo(response))}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(0)

    asyncio.run(main())


def _echo(response: bytes):
    async def answer(request: bytes, context) -> bytes:
        return response

    return answer


RUNNERS = {"rest": run_rest, "grpc": run_grpc, "inprocess": run_inprocess}
SERVERS = {"rest-echo": serve_rest_echo, "grpc-echo": serve_grpc_echo}


def main() -> int:
    job = json.loads(sys.stdin.readline())
    kind = job["kind"]
    if kind in SERVERS:
        SERVERS[kind](job)
        return 0
    if kind not in RUNNERS:
        print(f"unknown load job kind {kind!r}; known: {sorted(RUNNERS) + sorted(SERVERS)}", file=sys.stderr)
        return 2
    print(json.dumps(RUNNERS[kind](job)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
