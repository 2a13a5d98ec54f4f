"""kiln serving sync, an Airflow DAG file: `kiln_serving_sync` keeps TF Serving where the MLflow aliases
of every pipeline say (champion -> stable, challenger -> canary, previous-champion loaded); see
`infra/sync_dag.py`."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from infra.dag_factory import kiln_home  # noqa: E402
from infra.pipelines import discover  # noqa: E402
from infra.sync_dag import DAG_ID, serving_sync_dag  # noqa: E402

globals()[DAG_ID] = serving_sync_dag(discover(kiln_home()))
