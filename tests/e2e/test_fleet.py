"""The fleet, as far as this machine goes: `kiln up --profile hybrid --no-cluster` starts Airflow and
MLflow on Postgres with `LocalExecutor,CeleryExecutor`, a Redis broker and a Celery worker on queue
`onprem`; one pipeline placed by the hybrid profile runs end to end, and Airflow's own task-instance
records say each task ran on the executor and queue the profile named (its Kubernetes steps remapped
to the LocalExecutor). `kiln down` leaves no process, no database connection and no Celery worker.

Needs the machine's Postgres and Redis (KILN_POSTGRES_URL, KILN_REDIS_URL); without them it is
skipped, except under CI=true, where it must run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from infra.airflow.placement import step_placement
from infra.cli.runner import airflow_client
from infra.stack.fleet_services import FleetServiceError, FleetServices
from infra.stack.stack import FLEET_DATABASES, Stack
from tasks.config import load_config
from tasks.registry import step
from tasks.tuning import STUDY_DB
from tests.e2e.conftest import Kiln, supervised_processes

pytestmark = pytest.mark.slow
DIGITS = Path(__file__).resolve().parents[2] / "pipelines"


def _services_or_skip(home: Path) -> FleetServices:
    fleet = FleetServices.of(home)
    try:
        fleet.check_redis()
        fleet.connections(FLEET_DATABASES)
    except FleetServiceError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: the fleet test must run, but {exc}")
        pytest.skip(f"no Postgres/Redis for the fleet: {exc}")
    return fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, port_factory_session):
    root = tmp_path_factory.mktemp("fleet")
    home = root / "kiln"
    services = _services_or_skip(home)
    env = {**os.environ, "KILN_HOME": str(home), "COLUMNS": "200"}
    for name in ("AIRFLOW", "MLFLOW", "SERVING_REST", "SERVING_GRPC", "AIRFLOW_WORKER_LOGS", "AIRFLOW_TRIGGER_LOGS"):
        env[f"KILN_{name}_PORT"] = str(port_factory_session())
    cli = Kiln(home, env, root)
    up = cli("up", "--profile", "hybrid", "--no-cluster", timeout=600)
    try:
        assert up.returncode == 0, up.stderr
        assert "KubernetesExecutor steps run on the LocalExecutor" in up.stderr
        yield cli
    finally:
        stack = supervised_processes(home)
        down = cli("down", timeout=180)
        try:
            assert down.returncode == 0, down.stderr
            left = [p for p in stack if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            assert not left, f"kiln down left processes behind: {left}"
            assert services.connections(FLEET_DATABASES) == 0, "kiln down left database connections"
        finally:
            services.drop_databases(FLEET_DATABASES)


def test_a_hybrid_pipeline_runs_on_celery_and_local_executors_with_airflow_on_postgres(fleet, tiny_digits_csv):
    config_path = fleet.cwd / "fleetdigits.yaml"
    config_path.write_text((DIGITS / "digits.yaml").read_text()
                           .replace("pipeline: digits", "pipeline: fleetdigits")
                           .replace("digits.schema.pbtxt", str(DIGITS / "digits.schema.pbtxt"))
                           .replace("model_name: digits", "model_name: fleetdigits")
                           .replace("model_name: kiln-digits", "model_name: kiln-fleetdigits")
                           + "tune: {objective: accuracy, trials: 2, parallelism: 2, epochs: 1, early_stopping: false,\n"
                             "       space: {train.learning_rate: {type: float, low: 0.001, high: 0.01, log: true}}}\n")
    summary = fleet.run_json(str(config_path), "-p", f"data_source={tiny_digits_csv}", "-p", "epochs=2",
                             "-p", "thresholds={accuracy: 0.3}", "-p", "variants=[]")
    assert summary["state"] == "success" and summary["promoted"], summary.get("error")

    stack = Stack.load(fleet.home)
    assert stack.executors == ["LocalExecutor", "CeleryExecutor"]
    config = load_config(config_path, expand_env=False)
    assert config.placement.profile is None, "a pipeline that names no profile takes the running stack's"
    config = config.model_copy(update={"placement": config.placement.model_copy(update={"profile": "hybrid"})})
    client = airflow_client(stack)
    records = client._call("GET", f"/dags/kiln_fleetdigits/dagRuns/{summary['run_id']}/taskInstances")
    ran = {ti["task_id"]: (ti["executor"], ti["queue"]) for ti in records["task_instances"]}
    for task_id, (executor, queue) in ran.items():
        wanted = step_placement(config.placement, task_id, stack.remap, like=step(task_id).placed_as)
        assert executor == wanted.executor, f"{task_id} ran on {executor}, the profile says {wanted.executor}"
        if wanted.queue:
            assert queue == wanted.queue, f"{task_id} ran on queue {queue}, the profile says {wanted.queue}"
    assert {t for t, (e, q) in ran.items() if e == "CeleryExecutor" and q == "onprem"} >= {
        "ingest", "validate", "transform", "infra_validate", "push", "verify", "approve", "promote"}
    assert ran["train"][0] == "LocalExecutor", "Kubernetes training remapped to the LocalExecutor (--no-cluster)"

    import psycopg2

    fleet_services = FleetServices.of(fleet.home)
    with psycopg2.connect(fleet_services.database_url("airflow")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM dag_run WHERE dag_id = 'kiln_fleetdigits' AND state = 'success'")
        assert cursor.fetchone()[0] == 1, "Airflow's metadata is on Postgres"
    connection.close()
    # The two tune instances shared their study through the fleet's Postgres (KILN_TUNING_STORAGE), not SQLite.
    assert (summary["tune"]["completed"], summary["tune"]["parallelism"]) == (2, 2)
    with psycopg2.connect(fleet_services.database_url("tuning")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT study_name FROM studies")
        assert [row[0] for row in cursor.fetchall()] == [summary["tune"]["study"]]
    connection.close()
    assert not (fleet.home / "artifacts" / "fleetdigits" / STUDY_DB).exists()
    status = fleet("status", timeout=120)
    assert "airflow-celery-worker" in status.stdout and status.stdout.count("RUNNING") == 7
    recorded = json.loads((fleet.home / "stack.json").read_text())
    assert recorded["profile"] == "hybrid" and recorded["no_cluster"] is True
