"""kiln pipelines, an Airflow DAG file: one DAG `kiln_<pipeline>` per pipeline YAML.

The shipped `pipelines/*.yaml` and those `kiln run` was given (pointers under $KILN_HOME/pipelines/).
Each DAG: resolve -> ingest -> validate -> transform -> train -> optimize -> evaluate -> register ->
infra_validate -> push -> verify -> approve (a person's, when the run asks for one) -> promote, and a
teardown that closes the MLflow parent run; the step list lives in
`tasks/registry.py`, the wiring in `infra/airflow/dag_factory.py`. A pipeline whose data comes in spans also
gets `kiln_monitor_<pipeline>`, its drift monitor (`infra/airflow/monitor_dag.py`); one with a `batch:`
section gets `kiln_batch_<pipeline>`, its batch inference (`infra/airflow/batch_dag.py`).
"""

from __future__ import annotations

from infra.airflow.batch_dag import batch_dags
from infra.airflow.dag_factory import kiln_home, pipeline_dags
from infra.airflow.monitor_dag import monitor_dags
from infra.airflow.pipelines import discover, load_pipelines

_pipelines = load_pipelines(discover(kiln_home()))
globals().update(pipeline_dags(_pipelines))
globals().update(monitor_dags(_pipelines))
globals().update(batch_dags(_pipelines))
