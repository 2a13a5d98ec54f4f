"""The CLI's other network calls end in one line when a service does not answer (issue 11): the model
server's REST client retries its reads for a bounded time and never lets an httpx error out; the run
summary says which service did not answer instead of failing a run that succeeded."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from common.processes import free_port
from infra.cli.runner import _or_unavailable, registry_aliases, served_state
from serving.client import RestClient, ServingClientError, ServingUnavailable

pytestmark = pytest.mark.timeout(60)


class Status(BaseHTTPRequestHandler):
    """A model server that serves version 3 of every model, without labels."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/metadata"):
            status, body = 400, {"error": "Unrecognized servable version label: stable"}
        else:
            status, body = 200, {"model_version_status": [{"version": "3", "state": "AVAILABLE"}]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve(port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), Status)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


def test_a_read_waits_for_a_model_server_that_comes_back():
    port = free_port()
    servers = []
    threading.Timer(1.0, lambda: servers.append(serve(port))).start()
    try:
        with RestClient(f"http://127.0.0.1:{port}", timeout=2, retry_for=10) as client:
            assert client.status("m")[0]["version"] == "3"
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_a_model_server_that_stays_down_is_one_line_after_the_deadline():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with RestClient(url, timeout=2, retry_for=1.0) as client, pytest.raises(ServingUnavailable) as raised:
        client.status("m")
    assert 1.0 <= time.monotonic() - started < 4
    assert str(raised.value).startswith(f"GET {url}/v1/models/m: ConnectError: ")
    assert "\n" not in str(raised.value) and "retried for 1 s" in str(raised.value)


def test_a_predict_is_sent_once_and_fails_in_one_line():
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with RestClient(url, retry_for=30) as client, pytest.raises(ServingClientError, match=r"^POST .*: ConnectError"):
        client.predict("m", [{"x": 1}])
    assert time.monotonic() - started < 1


def test_served_state_says_the_server_did_not_answer(monkeypatch):
    import infra.cli.runner

    monkeypatch.setattr(infra.cli.runner, "SERVING_RETRY_SECONDS", 0.5)
    served = served_state(SimpleNamespace(serving_rest_url=f"http://127.0.0.1:{free_port()}"), "m")
    assert served["versions"] == [] and "ConnectError" in served["error"]


def test_served_state_of_a_server_that_answers():
    port = free_port()
    server = serve(port)
    try:
        served = served_state(SimpleNamespace(serving_rest_url=f"http://127.0.0.1:{port}"), "m")
    finally:
        server.shutdown()
        server.server_close()
    assert served == {"model_name": "m", "versions": [3], "labels": {}}


def test_mlflow_that_does_not_answer_is_unavailable_not_unregistered(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    url = f"http://127.0.0.1:{free_port()}"
    shown = _or_unavailable(lambda: registry_aliases(url, "kiln-m"))
    assert isinstance(shown, str) and shown.startswith("unavailable (") and "\n" not in shown
