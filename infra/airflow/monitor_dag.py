"""`kiln_monitor_<pipeline>`: for each pipeline whose data comes in spans or whose served requests are logged
(`serving.request_log`), a DAG that checks the newest span and the champion's served traffic for drift on every
new span (the data asset) and on its own schedule (`monitor.schedule`, hourly by default). Wiring only: the check is the registry's service step `check_drift`
(`tasks.steps.check_drift`), run like a pipeline step (`infra.airflow.dag_factory.service_task`).

`check_drift` writes the report (a table in the task log, a DriftReport artifact, an MLflow run);
`trigger_retrain` updates the pipeline's drift asset, with the report as the event's extra, only when
a threshold was crossed and the pipeline's schedule is on_drift; otherwise it is skipped, and
nothing else runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import DAG, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.trigger import CronTriggerTimetable

from infra.airflow.dag_factory import DEFAULT_ARGS, check_placement, service_task
from infra.airflow.schedules import data_asset, drift_asset
from tasks.config import ON_DRIFT, PipelineConfig
from tasks.errors import BadInputError
from tasks.registry import step
from tasks.spans import is_spanned


def monitor_dags(pipelines: list[tuple[Path, PipelineConfig]]) -> dict[str, DAG]:
    """dag_id -> monitor DAG of every loaded pipeline with spans; one that cannot be wired is left to
    pipeline_dags to report."""
    dags = {}
    for config_path, config in pipelines:
        try:
            dag = monitor_dag(config, config_path)
        except (BadInputError, OSError):
            continue
        if dag is not None:
            dags[dag.dag_id] = dag
    return dags


def monitor_dag(config: PipelineConfig, config_path: Path) -> DAG | None:
    spanned = is_spanned(config.data.source)
    if not spanned and config.serving.request_log is None:
        return None
    check_placement(config)
    drift = drift_asset(config)
    cron = CronTriggerTimetable(config.monitor.schedule, timezone="UTC")
    with DAG(
        dag_id=f"kiln_monitor_{config.pipeline}",
        description=f"drift of {config.pipeline}'s newest span and served traffic against its champion's training data",
        schedule=AssetOrTimeSchedule(timetable=cron, assets=[data_asset(config)]) if spanned else cron,
        catchup=False,
        max_active_runs=1,
        tags=["kiln", "monitor"],
        default_args=DEFAULT_ARGS,
        doc_md=__doc__,
    ) as dag:

        @task(outlets=[drift])
        def trigger_retrain(result: dict[str, Any]) -> None:
            if not result["drifted"]:
                raise AirflowSkipException("no feature crossed its drift threshold: no retrain")
            if config.schedule != ON_DRIFT:
                raise AirflowSkipException(f"drift in {', '.join(result['drifted_features'])}, but the schedule "
                                           f"is {config.schedule!r}, not {ON_DRIFT}: no retrain")
            get_current_context()["outlet_events"][drift].extra = result

        trigger_retrain(service_task(step("check_drift"), config, config_path))
    return dag
