"""`kiln run`: trigger the main DAG through Airflow's REST API, follow it, summarise it.

The summary is assembled from what the run left behind: task durations from Airflow, step
results from the artifacts whose URIs the tasks returned, aliases from the MLflow registry, and
one live prediction from the model server, timed from this process.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.model import DIGIT, PROBABILITIES

from infra.airflow_api import FINISHED, AirflowClient, admin_password, seconds_between
from infra.stack import Stack
from tasks.artifacts import read_artifact
from tasks.config import PipelineConfig

DAG_ID = "kiln_train_deploy"
TASK_ORDER = ("ingest", "validate", "transform", "train", "evaluate", "optimize", "register", "push", "verify",
              "finish_tracking")
# TensorFlow's C++ start-up chatter, which says nothing about why a task failed.
NOISE = re.compile(r"^([IWE]\d{4} |WARNING: All log messages before absl)")


class RunFailed(RuntimeError):
    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def trigger_and_follow(
    stack: Stack,
    config_path: Path,
    overrides: dict[str, Any],
    on_task: Callable[[str, str, float | None], None],
    timeout: float = 1800,
) -> tuple[AirflowClient, str]:
    """Trigger a run and call `on_task(task_id, state, seconds)` on every state change."""
    client = AirflowClient(stack.airflow_url, "admin", admin_password(stack.airflow_home))
    client.wait_for_dag(DAG_ID)
    client.unpause(DAG_ID)
    run_id = client.trigger(DAG_ID, {"config_path": str(config_path), **overrides})
    seen: dict[str, str | None] = {}
    deadline = time.monotonic() + timeout
    while True:
        for ti in sorted(client.task_states(DAG_ID, run_id), key=lambda t: _order(t.task_id)):
            if seen.get(ti.task_id) != ti.state:
                seen[ti.task_id] = ti.state
                if ti.state:
                    on_task(ti.task_id, ti.state, ti.duration)
        if client.dag_run(DAG_ID, run_id)["state"] in FINISHED:
            return client, run_id
        if time.monotonic() > deadline:
            raise RunFailed(f"run {run_id} did not finish within {timeout:.0f}s", {"run_id": run_id})
        time.sleep(1)


def _order(task_id: str) -> int:
    return TASK_ORDER.index(task_id) if task_id in TASK_ORDER else len(TASK_ORDER)


def summarize(client: AirflowClient, stack: Stack, run_id: str, config: PipelineConfig) -> dict[str, Any]:
    run = client.dag_run(DAG_ID, run_id)
    tasks = sorted(client.task_states(DAG_ID, run_id), key=lambda t: _order(t.task_id))
    durations = {t.task_id: round(t.duration, 2) for t in tasks if t.duration is not None}
    wall = seconds_between(run.get("start_date"), run.get("end_date"))
    summary: dict[str, Any] = {
        "run_id": run_id,
        "dag_id": DAG_ID,
        "state": run["state"],
        "wall_seconds": round(wall, 2) if wall is not None else None,
        "task_seconds": durations,
        "task_states": {t.task_id: t.state for t in tasks},
    }
    if wall:
        # Tasks may run in parallel (evaluate beside optimize), so the overhead is the part of the
        # run's wall time in which no task was running: queueing, scheduling, process start-up.
        busy = busy_seconds([(t.start_date, t.end_date) for t in tasks])
        summary["task_busy_seconds"] = round(busy, 2)
        summary["scheduling_overhead_seconds"] = round(wall - busy, 2)
        summary["scheduling_overhead_percent"] = round(100 * (wall - busy) / wall, 1)
    if run["state"] != "success":
        failed = next((t for t in tasks if t.state == "failed"), None)
        if failed:
            summary["failed_task"] = failed.task_id
            summary["error"], summary["failed_log_tail"] = _failure(client, run_id, failed.task_id,
                                                                    failed.try_number)
        return summary

    props = {step: _properties(client, run_id, step) for step in ("evaluate", "optimize", "register", "verify")}
    evaluation, optimized = props["evaluate"], props["optimize"]
    registered, verified = props["register"], props["verify"]
    summary["eval_accuracy"] = evaluation.get("accuracy")
    summary["tflite_accuracy"] = optimized.get("tflite_accuracy")
    summary["model_sizes"] = {k: v for k, v in optimized.items() if k.endswith("_bytes")}
    summary["mlflow"] = {
        "tracking_uri": stack.mlflow_url,
        "model_name": registered.get("model_name"),
        "version": registered.get("version"),
        "run_id": registered.get("mlflow_run_id"),
        "aliases": registry_aliases(stack.mlflow_url, registered.get("model_name")),
    }
    summary["serving"] = {
        "model_name": verified.get("serving_model_name"),
        "version": verified.get("served_version"),
        "labels": verified.get("labels"),
        "max_abs_diff": verified.get("max_abs_diff"),
    }
    summary["prediction"] = live_prediction(stack, config)
    return summary


def busy_seconds(intervals: list[tuple[str | None, str | None]]) -> float:
    """Length of the union of [start, end] intervals (ISO timestamps); open intervals are skipped."""
    spans = sorted((datetime.fromisoformat(s), datetime.fromisoformat(e)) for s, e in intervals if s and e)
    total, current_start, current_end = 0.0, None, None
    for start, end in spans:
        if current_end is None or start > current_end:
            if current_end is not None:
                total += (current_end - current_start).total_seconds()
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += (current_end - current_start).total_seconds()
    return total


def _properties(client: AirflowClient, run_id: str, task_id: str) -> dict[str, Any]:
    outputs = client.xcom(DAG_ID, run_id, task_id)
    merged: dict[str, Any] = {}
    for uri in outputs.values():
        merged.update(read_artifact(uri).properties)
    return merged


def _failure(client: AirflowClient, run_id: str, task_id: str, try_number: int,
             lines: int = 12) -> tuple[str, list[str]]:
    """(the exception as one line, the last log lines without TensorFlow's start-up noise)."""
    try:
        entries = client.task_log(DAG_ID, run_id, task_id, try_number)
    except Exception as exc:  # a missing log must not hide the failure itself
        return f"task {task_id} failed (log unavailable: {exc})", []
    error = f"task {task_id} failed"
    for entry in entries:
        for detail in entry.get("error_detail") or []:
            if isinstance(detail, dict) and detail.get("exc_value"):
                value = str(detail["exc_value"]).strip().splitlines()[0]
                kind = detail.get("exc_type", "")
                error = f"task {task_id} failed: {value}" if kind == "AirflowFailException" else \
                    f"task {task_id} failed: {kind}: {value}"
    events = [str(e.get("event", "")) for e in entries]
    tail = [line for line in events if line.strip() and not NOISE.match(line)][-lines:]
    return error, tail


def registry_aliases(tracking_uri: str, model_name: str | None) -> dict[str, int]:
    if not model_name:
        return {}
    from mlflow import MlflowClient

    model = MlflowClient(tracking_uri).get_registered_model(model_name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def live_prediction(stack: Stack, config: PipelineConfig) -> dict[str, Any]:
    """Predict one row of the data set through the `stable` label, as a user's client would."""
    from serving.client import RestClient

    with open(config.data.source, newline="") as fh:
        row = next(csv.DictReader(fh))
    label = int(float(row.pop(config.data.label_column)))
    pixels = [float(row[k]) for k in row]
    with RestClient(stack.serving_rest_url) as client:
        client.predict(config.serving.model_name, [pixels], label="stable")  # first call opens the connection
        result = client.predict(config.serving.model_name, [pixels], label="stable")
    output = result.outputs[0]
    probabilities = output[PROBABILITIES]
    return {
        "label": "stable",
        "true_digit": label,
        "predicted_digit": output[DIGIT],
        "probability": round(max(probabilities), 4),
        "latency_ms": round(result.latency_ms, 2),
    }


def write_summary(home: Path, summary: dict[str, Any]) -> Path:
    folder = home / "runs" / summary["run_id"].replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "summary.json"
    tmp = folder / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
    return path
