"""kiln serving sync, an Airflow DAG file: `kiln_serving_sync` keeps TF Serving where the MLflow aliases
of every pipeline say (champion -> stable, challenger -> canary, previous-champion loaded); see
`infra/airflow/sync_dag.py`."""

from __future__ import annotations

from infra.airflow.dag_factory import kiln_home
from infra.airflow.pipelines import discover, load_pipelines
from infra.airflow.sync_dag import DAG_ID, serving_sync_dag

globals()[DAG_ID] = serving_sync_dag(load_pipelines(discover(kiln_home())))
