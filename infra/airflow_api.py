"""A small client for Airflow 3's public REST API (`/api/v2`), authenticated with a JWT from
`/auth/token` (SimpleAuthManager's generated admin password)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

FINISHED = {"success", "failed"}
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"


class AirflowApiError(RuntimeError):
    """Airflow answered with an error, or not in time."""


@dataclass(frozen=True)
class TaskState:
    task_id: str
    state: str | None
    try_number: int
    duration: float | None
    start_date: str | None
    end_date: str | None


def admin_password(airflow_home: Path, user: str = "admin") -> str:
    path = airflow_home / PASSWORDS_FILE
    try:
        return json.loads(path.read_text())[user]
    except (FileNotFoundError, KeyError, ValueError):
        raise AirflowApiError(f"no generated password for {user!r} in {path}; is Airflow standalone running?") from None


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30):
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout)
        response = self._http.post("/auth/token", json={"username": username, "password": password})
        if response.status_code not in (200, 201):
            raise AirflowApiError(f"login as {username!r} at {base_url} failed: HTTP {response.status_code}")
        self._http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, f"/api/v2{path}", **kwargs)
        if response.status_code >= 400:
            detail = response.text[:300].replace("\n", " ")
            raise AirflowApiError(f"{method} /api/v2{path}: HTTP {response.status_code}: {detail}")
        return response.json() if response.content else None

    def dag_details(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG's details (doc_md, file_token, ...), or None while Airflow does not know it."""
        response = self._http.get(f"/api/v2/dags/{dag_id}/details")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise AirflowApiError(f"GET /api/v2/dags/{dag_id}/details: HTTP {response.status_code}")
        return response.json()

    def dags_with_tag(self, tag: str) -> list[dict[str, Any]]:
        return self._call("GET", "/dags", params={"tags": tag, "limit": 100})["dags"]

    def reparse(self, file_token: str) -> None:
        """Ask the dag-processor to parse a DAG file now instead of at its next interval."""
        self._call("PUT", f"/parseDagFile/{file_token}")

    def import_error(self) -> str | None:
        """The first DAG import error, as `file: last line of the traceback`."""
        errors = self._call("GET", "/importErrors").get("import_errors", [])
        if not errors:
            return None
        first = errors[0]
        return f"DAG file {first['filename']} failed to import: {first['stack_trace'].strip().splitlines()[-1]}"

    def wait_for_dag(self, dag_id: str, ready: Any = None, timeout: float = 120) -> dict[str, Any]:
        """Wait until the dag-processor has parsed the DAG (and `ready(details)` holds); fail fast on an
        import error. Returns the DAG's details."""
        deadline = time.monotonic() + timeout
        while True:
            details = self.dag_details(dag_id)
            if details is not None and (ready is None or ready(details)):
                return details
            error = self.import_error()
            if error:
                raise AirflowApiError(error)
            if time.monotonic() > deadline:
                state = "not parsed" if details is None else "parsed, but not from the current YAML"
                raise AirflowApiError(f"DAG {dag_id} {state} by Airflow after {timeout:.0f}s")
            time.sleep(0.5)

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self._call("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def latest_runs(self, dag_id: str, limit: int = 5) -> list[dict[str, Any]]:
        runs = self._call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": limit, "order_by": "-run_after"})
        return runs["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> list[TaskState]:
        body = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return [
            TaskState(
                task_id=ti["task_id"],
                state=ti["state"],
                try_number=ti.get("try_number") or 0,
                duration=ti.get("duration"),
                start_date=ti.get("start_date"),
                end_date=ti.get("end_date"),
            )
            for ti in body["task_instances"]
        ]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self._call("GET", path, params={"deserialize": True, "stringify": False})["value"]

    def task_links(self, dag_id: str, run_id: str, task_id: str) -> dict[str, str]:
        """The task's operator extra links that have a URL (name -> URL)."""
        body = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/links")
        return {name: url for name, url in body["extra_links"].items() if url}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> list[dict[str, Any]]:
        """The task's structured log entries (`event`, and `error_detail` on the exception)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{max(try_number, 1)}"
        body = self._call("GET", path, params={"full_content": True}, headers={"Accept": "application/json"})
        return [e if isinstance(e, dict) else {"event": str(e)} for e in body.get("content", [])]


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
