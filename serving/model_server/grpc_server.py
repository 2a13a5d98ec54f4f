"""Start and stop the gRPC server `grpc_service` builds: grpcio's sync server, or with batching a grpc.aio
server on an event loop of its own thread, behind the same plain calls for main.py.

Its own loop (not the REST server's) keeps gRPC independent of whether REST is exported and lets start-up
bind the port and print the readiness line before the REST port opens, as before.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import uvloop

from serving.model_server.core import ServingCore
from serving.model_server.grpc_service import build_aio_server, build_sync_server


class GrpcServer:
    def __init__(
        self,
        core: ServingCore,
        max_threads: int,
        channel_arguments: list[tuple[str, object]],
        reuse_port: bool = False,
    ):
        # --grpc_max_threads: the sync server's handler threads; with batching, the threads for every call
        # but the batched Predict (those may block: model runs without the batcher, config reloads).
        self._executor = ThreadPoolExecutor(max_workers=max(max_threads, 1), thread_name_prefix="grpc")
        self._loop = None
        if core.batcher is None:
            self._server = build_sync_server(core, self._executor, channel_arguments, reuse_port)
            return
        self._loop = uvloop.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="grpc-loop", daemon=True).start()

        async def build():
            return build_aio_server(core, self._executor, channel_arguments, reuse_port)

        self._server = self._on_loop(build())

    def _on_loop(self, coroutine, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def add_insecure_port(self, address: str) -> int:
        if self._loop is None:
            return self._server.add_insecure_port(address)

        async def add() -> int:
            return self._server.add_insecure_port(address)

        return self._on_loop(add())

    def start(self) -> None:
        if self._loop is None:
            self._server.start()
        else:
            self._on_loop(self._server.start())

    def stop(self, grace: float) -> None:
        if self._loop is None:
            self._server.stop(grace).wait(grace + 1.5)
            return
        try:
            self._on_loop(self._server.stop(grace), timeout=grace + 2)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._executor.shutdown(wait=False, cancel_futures=True)
