"""kiln-model-server: a local stand-in for tensorflow_model_server that speaks exactly its protocol.

It takes tensorflow_model_server's flags (same names and defaults; see `flags.py`), reads the same
ModelServerConfig text file, polls the same `base_path/<numeric version>/` folders and answers the same REST
(`/v1/models/...`) and gRPC (`tensorflow.serving.PredictionService` / `ModelService`) requests with the same
bodies, error messages and status codes, so the real binary can replace it unchanged.

Deliberate difference: ports bind to `--bind_address`, loopback (127.0.0.1) by default, where the real binary
binds 0.0.0.0. Pass `--bind_address=0.0.0.0` to expose it. Flags named `--kiln_*` exist only here and default
to behaviour that leaves every tensorflow_model_server command line meaning the same: `--kiln_server_processes`
(`process_group`) and `--kiln_freeze_heap` (`heap`).

Startup, as in TF Serving: config files are parsed first (a bad one fails at once with
`Error parsing text-format tensorflow.serving.ModelServerConfig: ...`), then every configured model's latest
version is loaded and warmed up, and only then are the ports opened and the readiness lines printed
(`Running gRPC ModelServer at ...`, `Exporting HTTP/REST API at:...`). A model that fails to load ends the
process with `Failed to start server. Error: ...` and exit code 255. An empty `model_config_list {}` starts a
server with no models; models are then added with HandleReloadConfigRequest.

Half-written versions are never loaded: only all-digit folder names count (so `.tmp-*` staging folders that the
deployer renames into place are invisible), the folder must hold `saved_model.pb` (or `model.tflite` with
--prefer_tflite_model), and its file list, sizes and mtimes must have been stable for 0.25 s across two scans
(see `discovery.VersionDiscovery`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading

from serving.model_server.flags import fail, parse_flags

log = logging.getLogger("kiln.model_server")
VERSION = "kiln-model-server 0.1.0 (TensorFlow ModelServer protocol 2.21)"


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s kiln-model-server] %(message)s"))
    root = logging.getLogger("kiln")
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _channel_arguments(text: str) -> list[tuple[str, object]]:
    arguments = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            fail(f"Invalid --grpc_channel_arguments entry (expected key=value): {item}")
        arguments.append((key, int(value) if value.lstrip("-").isdigit() else value))
    return arguments


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    options = parse_flags(argv)
    if options.version:
        print(f"TensorFlow ModelServer: {VERSION}")
        return
    if options.kiln_server_processes < 1:
        fail(f"--kiln_server_processes must be at least 1, got {options.kiln_server_processes}")
    if options.kiln_server_processes > 1:
        from serving.model_server.process_group import supervise

        code = supervise(argv, options.kiln_server_processes)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _configure_logging()
    from serving.model_server import config as config_files

    try:
        if options.model_config_file:
            model_config = config_files.parse_text_proto_file(
                options.model_config_file, config_files.model_server_config_pb2.ModelServerConfig
            )
        elif options.model_base_path:
            model_config = config_files.single_model_config(options.model_name, options.model_base_path)
        else:
            fail("Both server_options.model_base_path and server_options.model_config_file are empty!")
        if options.batching_parameters_file and not options.enable_batching:
            fail("--batching_parameters_file is only valid with --enable_batching")
        batching = (
            config_files.load_batching_options(options.batching_parameters_file)
            if options.enable_batching
            else None
        )
        prometheus_path = config_files.load_prometheus_path(options.monitoring_config_file)
    except config_files.ConfigFileError as exc:
        fail(str(exc))
    channel_arguments = _channel_arguments(options.grpc_channel_arguments)
    serve(options, model_config, batching, prometheus_path, channel_arguments)
    # Everything is stopped; skip TensorFlow's and gRPC's slow interpreter teardown (seconds) on exit.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _configure_tensorflow(options, group_size: int) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    import tensorflow as tf

    intra = options.tensorflow_intra_op_parallelism or options.tensorflow_session_parallelism
    inter = options.tensorflow_inter_op_parallelism or options.tensorflow_session_parallelism
    # "0 = auto" means the cores this process has: in a group of --kiln_server_processes, its share of them.
    # Idle pool threads spin before they sleep, so oversized pools burn the cores the siblings need.
    auto = max((os.cpu_count() or 1) // group_size, 1)
    tf.config.threading.set_intra_op_parallelism_threads(intra or auto)
    tf.config.threading.set_inter_op_parallelism_threads(inter or auto)


def serve(options, model_config, batching, prometheus_path, channel_arguments) -> None:
    from serving.model_server.process_group import SiblingProcesses

    siblings = SiblingProcesses.from_environment()
    _configure_tensorflow(options, len(siblings.sockets) if siblings is not None else 1)
    from serving.codec import ServingError
    from serving.model_server.batching import BatchScheduler
    from serving.model_server.core import ServingCore
    from serving.model_server.grpc_server import GrpcServer
    from serving.model_server.heap import freeze_heap
    from serving.model_server.loading import load_servable
    from serving.model_server.manager import ManagerOptions, ModelManager
    from serving.model_server.metrics import ServerMetrics
    from serving.model_server.request_log_files import FileLimits
    from serving.model_server.request_logger import RequestLogger
    from serving.model_server.warmup import run_warmup

    metrics = ServerMetrics()
    tags = [tag for tag in options.saved_model_tags.split(",") if tag]
    request_log = RequestLogger(
        metrics,
        FileLimits(options.kiln_request_log_max_file_bytes, options.kiln_request_log_max_file_seconds),
        options.kiln_request_log_queue_size,
        saved_model_tags=tags,
    )

    def warmup(path, servable):
        run_warmup(path, servable, metrics, options.num_request_iterations_for_warmup)

    def on_load_attempt(path, ok, seconds):
        metrics.load_attempt_count.inc(path, "success" if ok else "fail")
        if ok:
            metrics.load_latency.inc(path, amount=int(seconds * 1e6))

    manager = ModelManager(
        ManagerOptions(
            file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
            max_num_load_retries=max(options.max_num_load_retries, 0),
            load_retry_interval_seconds=options.load_retry_interval_micros / 1e6,
        ),
        load=lambda path: load_servable(path, options.prefer_tflite_model, tags),
        warmup=warmup if options.enable_model_warmup else None,
        on_load_attempt=on_load_attempt,
        prefer_tflite=options.prefer_tflite_model,
        after_versions_change=freeze_heap if options.kiln_freeze_heap else None,
        on_config=request_log.configure,
    )
    batcher = BatchScheduler(batching, metrics) if batching is not None else None
    core = ServingCore(manager, metrics, batcher, siblings, request_log)
    if siblings is not None:
        log.info("Process %d of %d (pid %d)", siblings.index + 1, len(siblings.sockets), os.getpid())

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: (stop.set(), manager.stop()))
    try:
        manager.reload_config(model_config, initial=True)
    except ServingError as error:
        fail(f"Failed to start server. Error: {error.code}: {error.message}")
    if stop.is_set():
        return

    bind = options.bind_address
    grpc_server = None
    # A UNIX socket path cannot be shared: in a process group only the first process binds --grpc_socket_path.
    socket_path = options.grpc_socket_path if siblings is None or siblings.is_first else ""
    if options.port or socket_path or siblings is not None:
        grpc_server = GrpcServer(
            core, options.grpc_max_threads, channel_arguments, reuse_port=siblings is not None
        )
        if options.port and not _bind_grpc(grpc_server, f"{_host(bind)}:{options.port}"):
            fail(f"Failed to start server. Error: could not bind gRPC port {bind}:{options.port}")
        if socket_path and not _bind_grpc(grpc_server, f"unix:{socket_path}"):
            fail(f"Failed to start server. Error: could not bind gRPC socket {socket_path}")
        if siblings is not None and not _bind_grpc(grpc_server, f"unix:{siblings.own_socket}"):
            fail(f"Failed to start server. Error: could not bind gRPC socket {siblings.own_socket}")
        grpc_server.start()
        if options.port:
            log.info("Running gRPC ModelServer at %s:%d ...", bind, options.port)
        if socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", socket_path)

    rest_socket = None
    if options.rest_api_port and options.rest_api_port == options.port:
        log.error("--rest_api_port cannot be the same as --port. Please use a different port for HTTP/REST API. "
                  "Skipped exporting HTTP/REST API.")  # fmt: skip
    elif options.rest_api_port:
        rest_socket = _listen(bind, options.rest_api_port, reuse_port=siblings is not None)
        host = "localhost" if bind in ("127.0.0.1", "localhost") else bind
        log.info("Exporting HTTP/REST API at:%s:%d ...", host, options.rest_api_port)
    elif prometheus_path:
        log.error("--monitoring_config_file requires --rest_api_port; the Prometheus page is not served")

    rest_server = _rest_server(options, core, prometheus_path) if rest_socket is not None else None
    if options.kiln_freeze_heap:
        freeze_heap()  # again: the servers and their imports added objects since the models loaded
    manager.start_polling()
    config_poller = _start_config_poller(options, manager, stop)
    try:
        if rest_server is not None:
            _run_rest(*rest_server, rest_socket, stop)
        else:
            stop.wait()
    finally:
        stop.set()
        manager.stop()
        if config_poller is not None:
            config_poller.join(timeout=2)
        if batcher is not None:
            batcher.stop()
        if grpc_server is not None:
            grpc_server.stop(grace=0.5)
        request_log.stop()  # after the servers: the last requests' records are written and every file published
        log.info("Server stopped")


def _bind_grpc(server, address: str) -> bool:
    # grpcio reports a failed bind by raising RuntimeError (older releases returned port 0).
    try:
        return server.add_insecure_port(address) != 0
    except RuntimeError:
        return False


def _host(bind: str) -> str:
    return f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind


def _listen(bind: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:  # --kiln_server_processes: the kernel spreads connections over the group's processes
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # Accepted sockets inherit this: uvicorn writes headers and body separately, and with Nagle on, the
    # body would wait for the client's delayed ACK (~40 ms per request).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((bind, port))
    except OSError as exc:
        fail(f"Failed to start server. Error: could not bind HTTP/REST port {bind}:{port}: {exc.strerror}")
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _rest_server(options, core, prometheus_path):
    """The uvicorn server for the REST API and the thread pool its handlers run on."""
    import uvicorn

    from serving.model_server.handler_threads import HandlerThreads
    from serving.model_server.rest import RestApp
    from serving.model_server.rest_transport import CoalescingHttpToolsProtocol

    threads = HandlerThreads(max(options.rest_api_num_threads, 1))
    app = RestApp(
        core,
        threads,
        options.rest_api_timeout_in_ms / 1000,
        prometheus_path,
        options.rest_api_enable_cors_support,
    )
    # proxy_headers off: TF Serving does not rewrite the client address from X-Forwarded-* headers either.
    # ws off: TF Serving's REST API has no websockets, and an upgrade must not reach the coalescing transport.
    config = uvicorn.Config(
        app, loop="uvloop", http=CoalescingHttpToolsProtocol, ws="none", lifespan="off", access_log=False,
        log_level="warning", server_header=False, date_header=False, timeout_keep_alive=30, proxy_headers=False,
    )  # fmt: skip
    return uvicorn.Server(config), threads


def _run_rest(server, threads, sock, stop: threading.Event) -> None:
    import uvloop

    async def run():
        watcher = asyncio.get_running_loop().run_in_executor(None, stop.wait)
        watcher.add_done_callback(lambda _: setattr(server, "should_exit", True))
        await server.serve(sockets=[sock])

    try:
        # uvicorn's loop="uvloop" only applies when uvicorn creates the loop; this one is ours.
        uvloop.run(run())
    finally:
        stop.set()
        threads.shutdown()


def _start_config_poller(options, manager, stop: threading.Event) -> threading.Thread | None:
    if not options.model_config_file or options.model_config_file_poll_wait_seconds <= 0:
        return None
    from serving.codec import ServingError
    from serving.model_server import config as config_files

    def poll():
        while not stop.wait(options.model_config_file_poll_wait_seconds):
            try:
                new_config = config_files.parse_text_proto_file(
                    options.model_config_file, config_files.model_server_config_pb2.ModelServerConfig
                )
                if new_config != manager.config:
                    manager.reload_config(new_config)
            except (config_files.ConfigFileError, ServingError) as exc:
                log.error("Failed to reload model config %s: %s", options.model_config_file, exc)

    thread = threading.Thread(target=poll, name="config-file-poller", daemon=True)
    thread.start()
    return thread


if __name__ == "__main__":
    main()
