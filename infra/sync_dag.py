"""The `kiln_serving_sync` DAG: every few minutes (and whenever triggered) TF Serving is brought to what
each pipeline's MLflow aliases say, so a promotion or rollback made in the MLflow UI takes effect
without a retrain. One task per pipeline (`sync_<pipeline>`), placed like that pipeline's push (it
writes the same model base path); each pipeline fails or succeeds on its own. A pipeline with no
registered model yet, or no TF Serving configured, is skipped. Only DAG files import this module.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, task
from airflow.sdk.exceptions import AirflowSkipException

from infra.airflow_links import XCOM_KEY as LINKS_XCOM
from infra.airflow_links import ModelVersionLink, ServedModelLink
from infra.placement import executor_remap, step_placement
from tasks.config import PipelineConfig, load_config
from tasks.errors import BadInputError

log = logging.getLogger(__name__)

DAG_ID = "kiln_serving_sync"
INTERVAL_VARIABLE = "KILN_SERVING_SYNC_MINUTES"
DEFAULT_INTERVAL_MINUTES = 5


def serving_sync_dag(paths: dict[str, Path]) -> DAG:
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
        for name, path in paths.items():
            try:
                config = load_config(path, expand_env=False)
            except (BadInputError, OSError) as exc:
                log.error("pipeline %s (%s) not synced: %s", name, path, exc)
                continue
            _sync_task(config, path)
    return dag


def _sync_task(config: PipelineConfig, path: Path) -> Any:
    chosen = step_placement(config.placement, "push", executor_remap())
    placed = {k: v for k, v in chosen.model_dump(exclude={"pod_override"}).items() if v is not None}

    def sync() -> dict[str, Any]:
        from airflow.sdk import get_current_context

        from infra.deployment import deployment_from_env
        from infra.serving_ops import OperatorError, PipelineServing, sync_pipeline
        from tasks.links import serving_links
        from tasks.model_registry import CHAMPION
        from tasks.serving_sync import NotRegistered

        try:
            serving = PipelineServing.of(load_config(path), deployment_from_env())
            result = sync_pipeline(serving)
        except (OperatorError, NotRegistered) as exc:
            raise AirflowSkipException(str(exc)) from None
        get_current_context()["ti"].xcom_push(key=LINKS_XCOM, value=serving_links(
            serving.tracking_uri, serving.target.rest_url, serving.registered_model, serving.served_model,
            result.aliases.get(CHAMPION)))
        return {"aliases": result.aliases, "labels": result.after.labels, "versions": list(result.after.versions),
                "changed": result.changed, "materialized": result.materialized}

    sync.__name__ = f"sync_{config.pipeline}"
    made = task(task_id=f"sync_{config.pipeline}", doc_md=f"Serve what {config.registered_model_name}'s aliases "
                f"say as {config.served_model_name}", **placed)(sync)()
    made.operator.operator_extra_links = (ModelVersionLink(), ServedModelLink())
    return made
