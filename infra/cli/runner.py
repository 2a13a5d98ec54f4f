"""`kiln run`: make sure Airflow has parsed the pipeline's DAG from the current YAML, trigger it
through the REST API, follow it, summarise it.

The summary is assembled from what the run left behind: task durations from Airflow, step results
from the artifacts whose URIs the tasks returned, aliases from the MLflow registry, and one live
prediction from the model server (a CSV row sent by feature name, as a client would), timed here.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from infra.airflow.pipelines import CONFIG_MARK, config_fingerprint
from infra.cli.airflow_api import (
    FINISHED,
    RETRY_SECONDS,
    AirflowApiError,
    AirflowClient,
    TaskState,
    admin_password,
    seconds_between,
)
from infra.stack.stack import Stack
from tasks.artifacts.approval import ApprovalDecision, ApprovalProperties
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.examples import Examples
from tasks.artifacts.infra_blessing import InfraBlessing
from tasks.artifacts.model import Model
from tasks.artifacts.optimized import OptimizedModel
from tasks.artifacts.promotion import Promotion
from tasks.artifacts.registered import RegisteredModel
from tasks.artifacts.verification import ServingVerification
from tasks.cache import RESULT_KEY, cacheable
from tasks.config import CACHED_STEPS, PipelineConfig
from tasks.data.partitions import first_row
from tasks.features import instance_from_row
from tasks.models.assemble import PREDICTION, PROBABILITIES
from tasks.models.export import CLASS, output_names
from tasks.registry import STEP_NAMES

AWAITING_INPUT = "awaiting_input"  # Airflow 3.3's state of a Human-in-the-loop task waiting for its answer
# TensorFlow's C++ start-up chatter, which says nothing about why a task failed.
NOISE = re.compile(r"^([IWE]\d{4} |WARNING: All log messages before absl)")
PARSE_TIMEOUT = 120
SERVING_RETRY_SECONDS = 30.0  # the model server's status reads ride out a restart this long


class RunFailed(RuntimeError):
    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def dag_id_of(config: PipelineConfig) -> str:
    return f"kiln_{config.pipeline}"


def airflow_client(stack: Stack, report: Callable[[str], None] | None = None,
                   retry_for: float | None = None) -> AirflowClient:
    """A client for the stack's api-server that rides out its restarts for `retry_for` seconds (default
    $KILN_RETRY_SECONDS, else 120), saying so through `report`."""
    if retry_for is None:
        retry_for = float(os.environ.get("KILN_RETRY_SECONDS") or RETRY_SECONDS)
    return AirflowClient(stack.airflow_url, "admin", admin_password(stack.airflow_home), retry_for=retry_for,
                         report=report)


def wait_until_parsed(client: AirflowClient, dag_id: str, config_path: Path, timeout: float = PARSE_TIMEOUT) -> None:
    """Return once Airflow's DAG was built from the YAML as it is now; ask for a re-parse if it was not."""
    mark = f"{CONFIG_MARK} {config_path} sha256={config_fingerprint(config_path)}"

    def current(details: dict[str, Any]) -> bool:
        return mark in (details.get("doc_md") or "")

    details = client.dag_details(dag_id)
    if details is None or not current(details):
        # All kiln DAGs come from one factory file: re-parsing it through any of them picks up the YAML.
        known = [details] if details else [client.dag_details(d["dag_id"]) for d in client.dags_with_tag("kiln")[:1]]
        for item in known:
            if item and item.get("file_token"):
                client.reparse(item["file_token"])
    client.wait_for_dag(dag_id, ready=current, timeout=timeout)


def trigger_and_follow(
    stack: Stack,
    config: PipelineConfig,
    config_path: Path,
    params: dict[str, Any],
    on_task: Callable[[TaskState], None],
    report: Callable[[str], None] = lambda line: None,
    timeout: float = 1800,
    poll: float = 1.0,
) -> tuple[AirflowClient, str]:
    """Trigger a run and call `on_task(task)` whenever a task's (state, try number) changes: a retried
    task shows as failed -> up_for_retry -> queued -> running (try 2). An api-server that restarts
    meanwhile is waited for (the client's retries); the run goes on in Airflow and is followed on."""
    client = airflow_client(stack, report)
    dag_id = dag_id_of(config)
    started = time.monotonic()
    wait_until_parsed(client, dag_id, config_path)
    report(f"{dag_id} is parsed from the current {config_path.name} (waited {time.monotonic() - started:.1f}s)")
    client.unpause(dag_id)
    run_id = client.trigger(dag_id, {k: v for k, v in params.items() if v is not None})

    def on_change(ti: TaskState) -> None:
        if ti.state == "success" and cacheable(ti.task_id):
            try:
                decision = (client.xcom(dag_id, run_id, ti.task_id) or {}).get(RESULT_KEY) or {}
            except AirflowApiError:  # a note, not the run: the line goes without it
                decision = {}
            if decision.get("hit"):
                ti = replace(ti, note=decision["reason"])
        on_task(ti)
        if ti.state == AWAITING_INPUT:
            report(awaiting_line(config.pipeline, run_id, ti.task_id, stack.airflow_url))

    if config.serving.promotion == "approval":  # the run may wait that long for a person
        timeout += config.serving.promotion_timeout_minutes * 60
    try:
        follow(client, dag_id, run_id, on_change, timeout, poll)
    except AirflowApiError as exc:
        raise AirflowApiError(f"run {run_id}: {exc} (the run goes on in Airflow; `kiln status` shows how it "
                              f"ends)") from None
    return client, run_id


def follow(client: AirflowClient, dag_id: str, run_id: str, on_task: Callable[[TaskState], None],
           timeout: float = 1800, poll: float = 1.0) -> str:
    """Report task changes until the run finishes; its final state."""
    seen: dict[str, tuple[str | None, int]] = {}
    deadline = time.monotonic() + timeout
    while True:
        for ti in sorted(client.task_states(dag_id, run_id), key=lambda t: _order(t.task_id)):
            key, previous = (ti.state, ti.try_number), seen.get(ti.task_id)
            # A task without a state yet is not news; one that loses its state (cleared) is.
            if key != previous and (ti.state is not None or (previous is not None and previous[0] is not None)):
                on_task(ti)
            seen[ti.task_id] = key
        state = client.dag_run(dag_id, run_id)["state"]
        if state in FINISHED:
            return state
        if time.monotonic() > deadline:
            raise RunFailed(f"run {run_id} did not finish within {timeout:.0f}s (last state {state})",
                            {"run_id": run_id})
        time.sleep(poll)


def awaiting_line(pipeline: str, run_id: str, task_id: str, airflow_url: str) -> str:
    """What a person does about a run that waits for them."""
    return (f"{task_id} awaiting approval: kiln approve {pipeline} {run_id} --comment '...' (or kiln reject), or "
            f"Required Actions in the Airflow UI: {airflow_url}/dags/kiln_{pipeline}/runs/{run_id}/tasks/{task_id}"
            f"/required_actions")


def _order(task_id: str) -> int:
    step = task_id.partition("[")[0]  # a mapped instance (tune[1]) sorts with its step
    return STEP_NAMES.index(step) if step in STEP_NAMES else len(STEP_NAMES)


def summarize(client: AirflowClient, stack: Stack, run_id: str, config: PipelineConfig) -> dict[str, Any]:
    dag_id = dag_id_of(config)
    run = client.dag_run(dag_id, run_id)
    tasks = sorted(client.task_states(dag_id, run_id), key=lambda t: _order(t.task_id))
    wall = seconds_between(run.get("start_date"), run.get("end_date"))
    summary: dict[str, Any] = {
        "run_id": run_id,
        "dag_id": dag_id,
        "pipeline": config.pipeline,
        "task": config.task.type,
        "state": run["state"],
        "wall_seconds": round(wall, 2) if wall is not None else None,
        "task_seconds": {t.task_id: round(t.duration, 2) for t in tasks if t.duration is not None},
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
            summary["error"], summary["failed_log_tail"] = _failure(client, dag_id, run_id, failed.task_id,
                                                                    failed.try_number)
        return summary

    def output(task_id: str, name: str) -> str:
        return client.xcom(dag_id, run_id, task_id)[name]

    evaluation = ModelEvaluation.read(output("evaluate", "evaluation")).properties
    optimized = OptimizedModel.read(output("optimize", "optimized")).properties
    registered = RegisteredModel.read(output("register", "registered")).properties
    examples = Examples.read(output("ingest", "examples")).properties
    summary["data"] = {split: {"rows": examples.row_counts[split], "bytes": examples.split_bytes.get(split),
                               "shards": examples.num_shards, "format": examples.payload_format}
                       for split in examples.row_counts} | {
        "source": {"uri": examples.source, "format": examples.source_format, "bytes": examples.source_bytes,
                   "rows_without_label": examples.rows_without_label}}
    summary["cache"] = {step: client.xcom(dag_id, run_id, step).get(RESULT_KEY) for step in CACHED_STEPS}
    trained = Model.read(output("train", "model"))
    summary["train"] = {"restarts": trained.properties.restarts,
                        "resumed_from_epoch": trained.properties.resumed_from_epoch}
    summary["tune"] = trained.properties.tuning  # {trials, completed, pruned, best: {params, metric}, parallelism}
    summary["metrics"] = evaluation.metrics  # the shipped artifact's: what the blessing checks
    summary["metrics_trained"] = evaluation.metrics_trained  # the trained float model's, for context
    shipped = optimized.shipped
    summary["shipped"] = {"variant": shipped.variant, "format": shipped.format, "sha256": evaluation.artifact_sha256,
                          "bytes": shipped.bytes, "gzip_bytes": shipped.gzip_bytes,
                          "trained_saved_model_bytes": optimized.saved_model_bytes}
    summary["blessing"] = {"blessed": evaluation.blessed, "checks": [c.model_dump() for c in evaluation.checks],
                           "champion_version": evaluation.champion_version,
                           "champion_metrics": evaluation.champion_metrics}
    infra = None
    if summary["task_states"].get("infra_validate") == "success":
        infra = InfraBlessing.read(output("infra_validate", "infra_blessing")).properties
        summary["infra_blessing"] = infra.model_dump()
    states = summary["task_states"]
    if states.get("verify") == "success":
        verified = ServingVerification.read(output("verify", "verification")).properties
        summary["verification"] = {"version": verified.served_version, "examples": verified.examples,
                                   "max_relative_diff": verified.max_relative_diff}
    # Approved, rejected or timed out; None when nobody was asked (promotion: auto, or not verified).
    approval = ApprovalDecision.read(output("approve", "approval")).properties \
        if states.get("approve") == "success" else None
    summary["approval"] = approval and {"decision": approval.decision, "by": approval.by,
                                        "comment": approval.comment, "at": approval.at,
                                        "approval_timeouts": approval.approval_timeouts}
    # Promoted = promote ran. An unblessed model's push, verify, approve and promote are skipped; a rejected or
    # timed-out approval skips promote; the run succeeds either way.
    summary["promoted"] = states.get("promote") == "success"
    if summary["promoted"]:
        promoted = Promotion.read(output("promote", "promotion")).properties
        summary["promotion"] = {"version": promoted.version, "why": promoted.why, "by": promoted.by,
                                "approved_by": promoted.approved_by}
    else:
        summary["not_promoted"] = _not_approved(approval) or evaluation.first_failure or \
            (infra.first_failure if infra else None) or "push was skipped"
    summary["optimize"] = {"baseline": optimized.baseline.model_dump(), "variants": [v.model_dump() for v in
                                                                                  optimized.variants],
                           "selected": optimized.selected, "budget": optimized.budget,
                           "budget_unit": optimized.budget_unit, "served_saved_model": optimized.served_saved_model}
    summary["mlflow"] = {
        "tracking_uri": stack.mlflow_url,
        "model_name": registered.model_name,
        "version": registered.version,
        "blessed": registered.blessed,
        "run_id": registered.mlflow_run_id,
        "aliases": _or_unavailable(lambda: registry_aliases(stack.mlflow_url, registered.model_name)),
    }
    # The run's outcome is Airflow's; a service that does not answer now costs these lines, not the summary.
    summary["serving"] = served_state(stack, config.served_model_name)
    if summary["serving"]["labels"].get("stable") is not None:
        prediction = _or_unavailable(lambda: live_prediction(stack, config, trained))
        summary["prediction" if isinstance(prediction, dict) else "prediction_error"] = prediction
    return summary


def _not_approved(approval: ApprovalProperties | None) -> str | None:
    if approval is None or approval.decision == "approved":
        return None
    if approval.decision == "timed_out":
        return (f"nobody approved v{approval.version} in time: the canary was withdrawn (approvals of this model "
                f"timed out: {approval.approval_timeouts})")
    return f"v{approval.version} rejected by {approval.by}" + (f": {approval.comment}" if approval.comment else "")


def _or_unavailable(read: Callable[[], Any]) -> Any:
    """What `read` returns, or why MLflow or the model server could not say (one line)."""
    from mlflow.exceptions import MlflowException

    from serving.client import ServingClientError

    try:
        return read()
    except (MlflowException, ServingClientError, OSError) as exc:
        return f"unavailable ({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})"


def served_state(stack: Stack, model: str) -> dict[str, Any]:
    """What the server itself reports: its versions and where kiln's labels point."""
    from serving.client import RestClient, ServingClientError, ServingUnavailable
    from serving.deployer import CANARY, STABLE

    with RestClient(stack.serving_rest_url, timeout=10, retry_for=SERVING_RETRY_SECONDS) as client:
        try:
            versions = sorted(int(s["version"]) for s in client.status(model) if s["state"] == "AVAILABLE")
            labels = {label: client.label_version(model, label) for label in (STABLE, CANARY)}
        except ServingUnavailable as exc:
            return {"model_name": model, "versions": [], "labels": {}, "error": str(exc)}
        except ServingClientError:  # the server answered: it does not serve this model
            return {"model_name": model, "versions": [], "labels": {}}
    return {"model_name": model, "versions": versions, "labels": {k: v for k, v in labels.items() if v is not None}}


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


def _failure(client: AirflowClient, dag_id: str, run_id: str, task_id: str, try_number: int,
             lines: int = 12) -> tuple[str, list[str]]:
    """(the exception as one line, the last log lines without TensorFlow's start-up noise)."""
    try:
        entries = client.task_log(dag_id, run_id, task_id, try_number)
    except (AirflowApiError, OSError) as exc:  # a missing log must not hide the failure itself
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
    from mlflow.exceptions import MlflowException

    try:
        model = MlflowClient(tracking_uri).get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # not registered yet
            return {}
        raise
    return {alias: int(version) for alias, version in model.aliases.items()}


def live_prediction(stack: Stack, config: PipelineConfig, trained: Model) -> dict[str, Any]:
    """Predict the data set's first row through the `stable` label, by feature name, as a client would."""
    from serving.client import RestClient
    from tasks.snapshot import with_span

    data = with_span(config).data
    row = first_row(data.source, data.format, data.image_shape)
    instance = instance_from_row(row, trained.preprocessing.features)
    name = config.served_model_name
    with RestClient(stack.serving_rest_url) as client:
        client.predict(name, [instance], label="stable")  # the first call opens the connection
        result = client.predict(name, [instance], label="stable")
    output = result.rows(output_names(trained.preprocessing.label))[0]
    images = {f.name: "x".join(map(str, f.shape)) for f in trained.preprocessing.features if f.kind == "image"}
    shown = {k: f"<{images[k]} image>" if k in images else None if isinstance(v, float) and math.isnan(v) else v
             for k, v in instance.items()}  # JSON has no NaN; an image's pixels are too many to show
    prediction: dict[str, Any] = {"label": "stable", "instance": shown, "true": row[config.data.label_column],
                                  "latency_ms": round(result.latency_ms, 2)}
    if config.task.type == "classification":
        prediction.update({"class": output[CLASS], "probability": round(max(output[PROBABILITIES]), 4)})
    else:
        prediction["prediction"] = round(float(output[PREDICTION]), 4)
    return prediction


def write_summary(home: Path, summary: dict[str, Any]) -> Path:
    folder = home / "runs" / summary["run_id"].replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "summary.json"
    tmp = folder / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)
    return path
