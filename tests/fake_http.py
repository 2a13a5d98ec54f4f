"""The HTTP plumbing of the tests' fake API servers (Airflow's, Kubernetes'): a threaded server on
127.0.0.1 that hands every request to `handle(request, method)`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def serve(handle: Callable[[BaseHTTPRequestHandler, str], None], port: int = 0) -> ThreadingHTTPServer:
    """Start serving in a daemon thread; stop with `.shutdown()` and `.server_close()`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    for method in METHODS:
        setattr(Handler, f"do_{method}", lambda request, m=method: handle(request, m))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server
