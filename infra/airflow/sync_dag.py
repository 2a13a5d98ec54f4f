"""The `kiln_serving_sync` DAG: every few minutes (and whenever triggered) TF Serving is brought to what
each pipeline's MLflow aliases say, so a promotion or rollback made in the MLflow UI takes effect
without a retrain. One task per pipeline (`sync_<pipeline>`), placed like that pipeline's push (it
writes the same model base path); each pipeline fails or succeeds on its own. A pipeline with no
registered model yet, or no TF Serving configured, is skipped. Each task is the registry's service step
`sync_serving` (`tasks.steps.sync_serving`), run like a pipeline step. Only DAG files import this module.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from infra.airflow.dag_factory import service_task
from infra.airflow.links import ModelVersionLink, ServedModelLink
from tasks.config import PipelineConfig
from tasks.errors import BadInputError
from tasks.registry import step

log = logging.getLogger(__name__)

DAG_ID = "kiln_serving_sync"
INTERVAL_VARIABLE = "KILN_SERVING_SYNC_MINUTES"
DEFAULT_INTERVAL_MINUTES = 5


def serving_sync_dag(pipelines: list[tuple[Path, PipelineConfig]]) -> DAG:
    """One sync task per loaded pipeline (`infra.airflow.pipelines.load_pipelines`)."""
    minutes = int(os.environ.get(INTERVAL_VARIABLE) or DEFAULT_INTERVAL_MINUTES)
    with DAG(
        dag_id=DAG_ID,
        description="TF Serving follows the MLflow aliases: champion -> stable, challenger -> canary",
        schedule=timedelta(minutes=minutes),
        start_date=datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        is_paused_upon_creation=False,  # serving that follows the registry is on from the start
        dagrun_timeout=timedelta(minutes=max(minutes, 10)),
        tags=["kiln", "serving"],
        default_args={"owner": "kiln", "retries": 1, "retry_delay": timedelta(seconds=10)},
        doc_md=__doc__ + f"\n\nEvery {minutes} minutes (`{INTERVAL_VARIABLE}`).\n",
    ) as dag:
        for path, config in pipelines:
            try:
                _sync_task(config, path)
            except BadInputError as exc:  # e.g. an unknown placement profile: the other pipelines still sync
                log.error("pipeline %s (%s) not synced: %s", config.pipeline, path, exc)
    return dag


def _sync_task(config: PipelineConfig, path: Path) -> Any:
    made = service_task(step("sync_serving"), config, path, task_id=f"sync_{config.pipeline}",
                        doc_md=f"Serve what {config.registered_model_name}'s aliases say as {config.served_model_name}")
    made.operator.operator_extra_links = (ModelVersionLink(), ServedModelLink())
    return made
