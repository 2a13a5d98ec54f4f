"""kiln pipelines, an Airflow DAG file: one DAG `kiln_<pipeline>` per pipeline YAML.

The shipped `pipelines/*.yaml` and those `kiln run` was given (pointers under $KILN_HOME/pipelines/).
Each DAG: resolve -> ingest -> validate -> transform -> train -> evaluate ‖ optimize -> register ->
push -> verify, and a teardown that closes the MLflow parent run; the step list lives in
`tasks/registry.py`, the wiring in `infra/dag_factory.py`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from infra.dag_factory import kiln_home, pipeline_dags  # noqa: E402
from infra.pipelines import discover  # noqa: E402

globals().update(pipeline_dags(discover(kiln_home())))
