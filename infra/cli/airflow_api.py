"""A small client for Airflow 3's public REST API (`/api/v2`), authenticated with a JWT from
`/auth/token` (SimpleAuthManager's generated admin password).

Every call rides out an api-server that restarts: transport errors (refused, reset, timed out) and 5xx
answers are retried with bounded exponential backoff (tenacity) for `retry_for` seconds, saying once
through `report` that it waits; a 401 (a restarted api-server signs tokens with a new key) logs in again
once. Other 4xx are answers and are not retried. After the deadline: one AirflowApiError line naming the
URL and the last error.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

FINISHED = {"success", "failed"}
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
RETRY_SECONDS = 120.0
# What a restarting server looks like from here; an UnsupportedProtocol or a bad request is not.
TRANSIENT = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)


class AirflowApiError(RuntimeError):
    """Airflow answered with an error, or not in time."""


class _Unavailable(Exception):
    """A 5xx answer (the api-server, or a proxy in front of it, is not serving yet): retried."""

    def __init__(self, response: httpx.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


@dataclass(frozen=True)
class TaskState:
    task_id: str
    state: str | None
    try_number: int
    duration: float | None
    start_date: str | None
    end_date: str | None
    note: str = ""  # what the CLI adds, e.g. a step that reused a cached output: "cached (run ...)"


def _task_label(ti: dict[str, Any]) -> str:
    """The task's id; a mapped task's instances are tune[0], tune[1], ..."""
    index = ti.get("map_index")
    return ti["task_id"] if index is None or index < 0 else f"{ti['task_id']}[{index}]"


def admin_password(airflow_home: Path, user: str = "admin") -> str:
    path = airflow_home / PASSWORDS_FILE
    try:
        return json.loads(path.read_text())[user]
    except (FileNotFoundError, KeyError, ValueError):
        raise AirflowApiError(f"no generated password for {user!r} in {path}; is Airflow standalone running?") from None


def new_run_id(now: datetime | None = None) -> str:
    """A run id kiln chooses before triggering, so a retried trigger can recognise its own run. It matches
    Airflow's default `allowed_run_id_pattern` (^[A-Za-z0-9_.~:+-]+$) and is safe as a folder name."""
    return f"kiln__{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}__{secrets.token_hex(4)}"


def backoff_within(retry_for: float) -> Callable[[RetryCallState], float]:
    """Exponential backoff (0.25 s doubling to 4 s), the last wait cut to end at `retry_for`: the last
    attempt is made at the deadline, not a backoff step before it."""
    exponential = wait_exponential(multiplier=0.25, min=0.25, max=4)
    return lambda state: max(0.0, min(exponential(state), retry_for - state.seconds_since_start))


def _body(response: httpx.Response) -> str:
    return response.text[:300].replace("\n", " ")


def _why(exc: BaseException) -> str:
    """Why a call is retried, in a word: the exception class or the HTTP status."""
    return str(exc) if isinstance(exc, _Unavailable) else type(exc).__name__


def _detail(exc: BaseException) -> str:
    """The last error, on one line."""
    if isinstance(exc, _Unavailable):
        return f"HTTP {exc.response.status_code}: {_body(exc.response)}"
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30,
                 retry_for: float = RETRY_SECONDS, report: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self.retry_for = retry_for
        self._report = report or (lambda line: None)
        self._sleep = sleep
        self._username, self._password = username, password
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
        try:
            self._login()
        except BaseException:
            self._http.close()
            raise

    def close(self) -> None:
        self._http.close()

    def _login(self) -> None:
        response, _ = self._send("POST", "/auth/token", json={"username": self._username, "password": self._password})
        if response.status_code not in (200, 201):
            raise AirflowApiError(f"login as {self._username!r} at {self.base_url} failed: HTTP "
                                  f"{response.status_code}: {_body(response)}")
        self._http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def _send(self, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, int]:
        """(the first answer that is not a 5xx, how many attempts it took). Transport errors and 5xx are
        retried with exponential backoff until `retry_for` seconds have passed; the first retry says so
        through `report` (once), and so does the recovery."""
        started = time.monotonic()
        attempts = 0
        waited = False

        def attempt() -> httpx.Response:
            nonlocal attempts
            attempts += 1
            response = self._http.request(method, url, **kwargs)
            if response.status_code >= 500:
                raise _Unavailable(response)
            return response

        def before_sleep(state: RetryCallState) -> None:
            nonlocal waited
            if not waited:
                waited = True
                self._report(f"Airflow API at {self.base_url} not answering ({_why(state.outcome.exception())}), "
                             f"retrying for {self.retry_for:.0f} s")

        retrying = Retrying(
            retry=retry_if_exception_type((_Unavailable, *TRANSIENT)),
            stop=stop_after_delay(self.retry_for),
            wait=backoff_within(self.retry_for),
            before_sleep=before_sleep,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            response = retrying(attempt)
        except (_Unavailable, *TRANSIENT) as exc:
            raise AirflowApiError(f"Airflow API at {self.base_url} still failing after "
                                  f"{time.monotonic() - started:.0f} s ({method} {url}): {_detail(exc)}") from None
        except httpx.HTTPError as exc:  # not a restart (a bad URL, a protocol error): no use retrying
            raise AirflowApiError(f"Airflow API at {self.base_url} ({method} {url}): {_detail(exc)}") from None
        if waited:
            self._report(f"Airflow API at {self.base_url} answering again after {time.monotonic() - started:.1f} s")
        return response, attempts

    def _request(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response, int]:
        """`_send` with the token renewed once on a 401: a restarted api-server no longer knows the old one."""
        response, attempts = self._send(method, path, **kwargs)
        if response.status_code == 401:
            self._login()
            response, more = self._send(method, path, **kwargs)
            attempts += more
        return response, attempts

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response, _ = self._request(method, f"/api/v2{path}", **kwargs)
        return self._json(method, path, response)

    @staticmethod
    def _json(method: str, path: str, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise AirflowApiError(f"{method} /api/v2{path}: HTTP {response.status_code}: {_body(response)}")
        try:
            return response.json() if response.content else None
        except ValueError:
            raise AirflowApiError(f"{method} /api/v2{path}: HTTP {response.status_code}, not JSON: "
                                  f"{_body(response)}") from None

    def dag_details(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG's details (doc_md, file_token, ...), or None while Airflow does not know it."""
        path = f"/dags/{dag_id}/details"
        response, _ = self._request("GET", f"/api/v2{path}")
        if response.status_code == 404:
            return None
        return self._json("GET", path, response)

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

    def asset(self, name: str) -> dict[str, Any] | None:
        """The asset of that exact name (id, uri, ...), or None while no parsed DAG declares it."""
        assets = self._call("GET", "/assets", params={"name_pattern": name, "limit": 100})["assets"]
        return next((a for a in assets if a["name"] == name), None)

    def post_asset_event(self, asset_id: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Tell Airflow the asset changed: the DAGs scheduled on it run. (A POST retried after a lost answer
        could post the event twice; the pipeline DAG's max_active_runs=1 then runs the retrain twice, in turn.)"""
        return self._call("POST", "/assets/events", json={"asset_id": asset_id, "extra": extra})

    def last_asset_event(self, asset_id: int) -> dict[str, Any] | None:
        events = self._call("GET", "/assets/events",
                            params={"asset_id": asset_id, "order_by": "-timestamp", "limit": 1})["asset_events"]
        return events[0] if events else None

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG's summary (is_paused, next_dagrun_run_after, timetable_summary, ...), or None if unknown."""
        path = f"/dags/{dag_id}"
        response, _ = self._request("GET", f"/api/v2{path}")
        if response.status_code == 404:
            return None
        return self._json("GET", path, response)

    def unpause(self, dag_id: str) -> None:
        self._call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str | None = None) -> str:
        """Create a run with an id chosen here, at most once: when a retried POST finds its id taken (409),
        the server had accepted an earlier attempt whose answer was lost, and that run is this one."""
        run_id = run_id or new_run_id()
        path = f"/dags/{dag_id}/dagRuns"
        response, attempts = self._request("POST", f"/api/v2{path}",
                                           json={"dag_run_id": run_id, "logical_date": None, "conf": conf})
        if response.status_code == 409 and attempts > 1:
            return run_id
        return self._json("POST", path, response)["dag_run_id"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def latest_runs(self, dag_id: str, limit: int = 5) -> list[dict[str, Any]]:
        runs = self._call("GET", f"/dags/{dag_id}/dagRuns", params={"limit": limit, "order_by": "-run_after"})
        return runs["dag_runs"]

    def task_states(self, dag_id: str, run_id: str) -> list[TaskState]:
        body = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return [
            TaskState(
                task_id=_task_label(ti),
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


    def hitl_detail(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        """The Human-in-the-loop request of a task instance and its answer (`response_received`,
        `chosen_options`, `responded_by_user`, ...), or None: the task has asked nothing (yet)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"
        response, _ = self._request("GET", f"/api/v2{path}")
        if response.status_code == 404:
            return None
        return self._json("GET", path, response)

    def waiting_for_input(self, dag_id: str, task_id: str) -> list[dict[str, Any]]:
        """The task's unanswered Human-in-the-loop requests in every run of the DAG, newest first."""
        body = self._call("GET", f"/dags/{dag_id}/dagRuns/~/hitlDetails",
                          params={"task_id": task_id, "response_received": False, "order_by": "-created_at"})
        return body["hitl_details"]

    def answer_hitl(self, dag_id: str, run_id: str, task_id: str, chosen: str,
                    params_input: dict[str, Any]) -> dict[str, Any]:
        """Answer a task's Human-in-the-loop request. AlreadyAnswered when it was answered before (HTTP 409) —
        unless this call's own earlier attempt was the answer and only its reply was lost."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails"
        response, attempts = self._request("PATCH", f"/api/v2{path}",
                                           json={"chosen_options": [chosen], "params_input": params_input})
        if response.status_code == 409:
            detail = self.hitl_detail(dag_id, run_id, task_id) or {}
            if attempts > 1 and detail.get("chosen_options") == [chosen] and \
                    detail.get("params_input") == params_input:
                return detail
            raise AlreadyAnswered(detail)
        return self._json("PATCH", path, response)


class AlreadyAnswered(AirflowApiError):
    """A Human-in-the-loop request is answered once; `detail` holds that answer."""

    def __init__(self, detail: dict[str, Any]):
        super().__init__("already answered")
        self.detail = detail


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
