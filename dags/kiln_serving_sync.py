"""kiln serving sync, an Airflow DAG file: `kiln_serving_sync` keeps TF Serving where the MLflow aliases
of every pipeline say (champion -> stable, challenger -> canary, previous-champion loaded); see
`infra/sync_dag.py`."""

from __future__ import annotations

from infra.dag_factory import kiln_home
from infra.pipelines import discover
from infra.sync_dag import DAG_ID, serving_sync_dag

globals()[DAG_ID] = serving_sync_dag(discover(kiln_home()))
