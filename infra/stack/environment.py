"""The environment of every service of an embedded stack and, through Airflow, of every task: where kiln
keeps its state and artifacts, how to reach MLflow and TF Serving, Airflow's settings for this stack (and
the fleet's Postgres and Redis for every profile but local)."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

from common import LEGACY_KERAS_ENV
from infra import REPO_ROOT
from infra.airflow.deployment import TUNING_STORAGE_VARIABLE
from infra.airflow.placement import PROFILE_VARIABLE, REMAP_VARIABLE
from infra.stack.fleet_services import FleetServices
from infra.stack.layout import StackLayout


def service_env(stack: StackLayout) -> dict[str, str]:
    """The environment of every service and, through Airflow, of every task."""
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
            **LEGACY_KERAS_ENV,
            "TF_CPP_MIN_LOG_LEVEL": "1",
            "KILN_HOME": str(stack.home),
            PROFILE_VARIABLE: stack.profile,  # where a pipeline that names no placement profile runs
            # Object storage when the operator says so (s3://bucket/artifacts), else under KILN_HOME.
            "KILN_ARTIFACT_ROOT": os.environ.get("KILN_ARTIFACT_ROOT") or str(stack.home / "artifacts"),
            "KILN_SERVING_GRPC": f"127.0.0.1:{stack.ports.serving_grpc}",
            "KILN_SERVING_REST": stack.serving_rest_url,
            "KILN_SERVING_MODELS": str(stack.serving_models),
            "KILN_SERVING_CONFIG": str(stack.serving_config),
            "MLFLOW_TRACKING_URI": stack.mlflow_url,
            # MLflow 3's job runner (GenAI scorer jobs, seven huey consumers, ~1.7 GB): kiln has no jobs.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "AIRFLOW_HOME": str(stack.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": ",".join(stack.executors),
            # A 2-core laptop: a few task processes at a time, not Airflow's default 32.
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(stack.ports.airflow),
            "AIRFLOW__API__WORKERS": "1",
            # Tasks reach the execution API through base_url; without it they dial port 8080.
            "AIRFLOW__API__BASE_URL": stack.airflow_url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{stack.airflow_url}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(stack.ports.airflow_worker_logs),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(stack.ports.airflow_trigger_logs),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # One key for all components: tokens the api-server issued stay valid when it restarts,
            # and the scheduler's task tokens are accepted by the execution API.
            "AIRFLOW__API_AUTH__JWT_SECRET": _secret(stack.home, "airflow-jwt-secret"),
        }
    )
    if stack.remap:
        env[REMAP_VARIABLE] = ",".join(f"{k}={v}" for k, v in stack.remap.items())
    if stack.fleet:
        env.update(_fleet_env(stack.fleet))
    return env


def _fleet_env(fleet: FleetServices) -> dict[str, str]:
    airflow_db = fleet.database_url("airflow", "postgresql+psycopg2")
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
        "AIRFLOW__CELERY__BROKER_URL": fleet.redis_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{airflow_db}",
        # Stacks sharing one Redis must not take each other's tasks.
        "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{fleet.key}:",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        # Tune tasks on any worker share their Optuna study through this database (tune.storage overrides it).
        TUNING_STORAGE_VARIABLE: fleet.database_url("tuning", "postgresql+psycopg2"),
    }


def _secret(home: Path, name: str) -> str:
    """A key generated on first use and kept, readable by this user only, in KILN_HOME/secrets."""
    path = home / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{name}.tmp")
        tmp.touch(mode=0o600)
        tmp.write_text(secrets.token_urlsafe(32))
        os.replace(tmp, path)
    return path.read_text().strip()
