"""A tiny stand-in for Airflow 3's api-server: the endpoints `kiln run` uses, on a real socket on
127.0.0.1, that can be stopped and started again on the same port while a client talks to it.

Its state (runs, their progress, what was asked) lives in the FakeAirflow object, not in the server, so
it survives a restart, as Airflow's metadata database does; the JWT signing key does not (a restarted
api-server without a configured secret rejects the tokens it issued before: 401).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from common.processes import free_port
from tests.fake_http import serve

PASSWORD = "fake-admin-password"


class FakeAirflow:
    def __init__(self, dag_id: str = "kiln_fake", doc_md: str = "", script: list[dict[str, tuple]] | None = None):
        """`script`: the task instances' (state, try_number) at each taskInstances GET of a run; the run
        succeeds (or fails, with `final`) once the script is played through."""
        self.port = free_port()
        self.dag_id = dag_id
        self.doc_md = doc_md
        self.script = script or [{"train": ("running", 1)}, {"train": ("success", 1)}]
        self.final = "success"
        self.runs: dict[str, dict[str, Any]] = {}
        self.asked: Counter[str] = Counter()  # "METHOD /path" (ids replaced by {id}) -> how often
        self.answer_next: list[int] = []  # status codes to answer the next requests with (5xx, 4xx)
        self.drop_after_accept = 0  # POST dagRuns: create the run, then hang up without answering
        self.key = secrets.token_hex(8)
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeAirflow:
        self.key = secrets.token_hex(8)  # a new process signs with a new key
        self._server = serve(self._handle, self.port)
        return self

    def stop(self) -> None:
        """Like kill -9 between two requests: the port refuses connections from now on."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- the API ---------------------------------------------------------------------------------
    def _handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        path = request.path.split("?")[0]
        length = int(request.headers.get("Content-Length") or 0)
        body = json.loads(request.rfile.read(length) or b"null") if length else None
        with self._lock:
            self.asked[f"{method} {re.sub(r'/dagRuns/[^/]+', '/dagRuns/{id}', path)}"] += 1
            if self.answer_next:
                return self._send(request, self.answer_next.pop(0), {"detail": "scripted answer"})
            if path == "/auth/token" and method == "POST":
                if body != {"username": "admin", "password": PASSWORD}:
                    return self._send(request, 401, {"detail": "Invalid credentials"})
                return self._send(request, 201, {"access_token": f"{self.key}.{secrets.token_hex(4)}"})
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not token.startswith(f"{self.key}."):
                return self._send(request, 401, {"detail": "Invalid JWT token"})
            return self._api(request, method, path, body)

    def _api(self, request: BaseHTTPRequestHandler, method: str, path: str, body: Any) -> None:
        dag = f"/api/v2/dags/{self.dag_id}"
        if method == "GET" and path == f"{dag}/details":
            return self._send(request, 200, {"dag_id": self.dag_id, "doc_md": self.doc_md, "file_token": "t"})
        if method == "GET" and path == "/api/v2/importErrors":
            return self._send(request, 200, {"import_errors": [], "total_entries": 0})
        if method in ("PATCH", "PUT") and path.startswith("/api/v2/"):
            return self._send(request, 200, {})
        if method == "POST" and path == f"{dag}/dagRuns":
            run_id = body["dag_run_id"]
            if run_id in self.runs:  # Airflow: the unique constraint on (dag_id, run_id)
                return self._send(request, 409, {"detail": "Unique constraint violation"})
            self.runs[run_id] = {"dag_run_id": run_id, "state": "queued", "step": 0, "conf": body["conf"]}
            if self.drop_after_accept:
                self.drop_after_accept -= 1
                request.close_connection = True  # accepted, and the answer is lost
                return None
            return self._send(request, 200, self._run(run_id))
        match = re.fullmatch(rf"{dag}/dagRuns/([^/]+)(/taskInstances)?", path)
        if method == "GET" and match and match.group(1) in self.runs:
            run = self.runs[match.group(1)]
            if not match.group(2):
                return self._send(request, 200, self._run(run["dag_run_id"]))
            states = self.script[min(run["step"], len(self.script) - 1)]
            run["step"] += 1
            run["state"] = self.final if run["step"] >= len(self.script) else "running"
            return self._send(request, 200, {"task_instances": [
                {"task_id": task, "state": state, "try_number": tries, "duration": 1.5 if state == "success" else None,
                 "start_date": None, "end_date": None} for task, (state, tries) in states.items()]})
        return self._send(request, 404, {"detail": f"no route {method} {path}"})

    def _run(self, run_id: str) -> dict[str, Any]:
        run = self.runs[run_id]
        return {"dag_run_id": run_id, "dag_id": self.dag_id, "state": run["state"], "conf": run["conf"]}

    @staticmethod
    def _send(request: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)
