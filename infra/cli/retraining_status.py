"""What `kiln status` says about how each pipeline retrains: its schedule, the next run Airflow has
planned, the last event on its data asset, and the monitor's last drift check."""

from __future__ import annotations

from typing import Any

from infra.cli.airflow_api import AirflowApiError
from tasks.config import PipelineConfig


def retraining_row(client: Any, config: PipelineConfig) -> tuple[str, str, str, str]:
    """(schedule, next run, last data event, last drift check) as Airflow records them."""
    if client is None:
        return str(config.schedule), "unavailable", "unavailable", "unavailable"
    name = config.pipeline
    try:
        dag = client.dag(f"kiln_{name}")
        data = client.asset(f"kiln_{name}_data")
        event = client.last_asset_event(data["id"]) if data else None
        monitored = client.dag(f"kiln_monitor_{name}") is not None
        monitor = client.latest_runs(f"kiln_monitor_{name}", limit=1) if monitored else []
    except AirflowApiError as exc:
        return str(config.schedule), f"unavailable ({str(exc)[:60]})", "", ""
    schedule = config.schedule or "on trigger only"
    if dag is None:
        next_run = "not parsed yet"
    elif dag.get("is_paused"):
        next_run = "paused (kiln run or the UI toggle unpauses)" if config.schedule else "-"
    else:
        next_run = _when(dag.get("next_dagrun_run_after")) or ("on the next event" if config.schedule else "-")
    last_event = "none" if event is None else (
        f"{_when(event['timestamp'])}" + (f" span {event['extra']['span']}" if "span" in (event.get("extra") or {})
                                          else ""))
    check = "none yet" if monitored else "no monitor (no {SPAN} in data.source, no serving.request_log)"
    if monitor:
        run = monitor[0]
        check = f"{_when(run.get('end_date') or run.get('run_after'))} {run['state']}"
        if run["state"] == "success":
            check += _drift_verdict(client, f"kiln_monitor_{name}", run["dag_run_id"])
    return schedule, next_run, last_event, check


def _drift_verdict(client: Any, dag_id: str, run_id: str) -> str:
    try:
        result = client.xcom(dag_id, run_id, "check_drift")
    except AirflowApiError:
        return ""
    if result.get("champion_version") is None:
        return ": no champion to compare with"
    served = result.get("served_requests")
    measured = f" ({served} served requests measured)" if served else ""
    return (f": drift in {', '.join(result['drifted_features'])}" if result["drifted"] else ": no drift") + measured


def _when(timestamp: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM UTC'."""
    if not timestamp:
        return ""
    return timestamp.replace("T", " ")[:16] + " UTC"
