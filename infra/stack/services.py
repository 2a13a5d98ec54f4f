"""The programs of an embedded stack, as supervisord runs them: MLflow, kiln-model-server and Airflow's
api-server, scheduler, dag-processor and triggerer (and a Celery worker when the profile uses Celery),
each with the health check that says it is ready."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from common.processes import log_tail
from infra.stack.layout import StackError, StackLayout
from infra.stack.supervision import Program, SupervisorError

# The components that fork task processes start with the steps' libraries imported (infra/stack/preloaded_airflow.py).
PRELOADED_AIRFLOW = [sys.executable, "-m", "infra.stack.preloaded_airflow"]


def stack_services(stack: StackLayout) -> list[Service]:
    """The stack's programs in the order `kiln up` waits for them to be healthy."""
    mlflow_dir = stack.home / "mlflow"
    monitor = f"{stack.airflow_url}/api/v2/monitor/health"
    return [
        Service(
            name="mlflow",
            ports=(stack.ports.mlflow,),
            command=[
                "mlflow", "server",
                "--backend-store-uri", stack.fleet.database_url("mlflow", "postgresql+psycopg2") if stack.fleet else
                f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                "--artifacts-destination",
                os.environ.get("KILN_MLFLOW_ARTIFACTS") or str(mlflow_dir / "artifacts"),
                "--host", "127.0.0.1", "--port", str(stack.ports.mlflow), "--workers", "1",
            ],
            health_url=f"{stack.mlflow_url}/health",
            healthy=lambda r: r.status_code == 200,
        ),
        Service(
            name="model-server",
            ports=(stack.ports.serving_rest, stack.ports.serving_grpc),
            command=[
                "kiln-model-server",
                f"--port={stack.ports.serving_grpc}",
                f"--rest_api_port={stack.ports.serving_rest}",
                # The deployer rewrites this file on every change, so a restarted server loads
                # the versions and labels last applied: a crash never loses which version is stable.
                f"--model_config_file={stack.serving_config}",
                "--file_system_poll_wait_seconds=1",
                # A version's format follows its folder: model.tflite (the compressed model) or a SavedModel.
                "--prefer_tflite_model=true",
                # A version that cannot load fails its push at once (TF Serving retries 5 x 60 s).
                "--max_num_load_retries=0",
                # A restart reloads the labels the deployer last wrote, before versions load.
                "--allow_version_labels_for_unavailable_models=true",
            ],
            # TF Serving's own readiness probe: an unknown model answers a JSON NOT_FOUND.
            health_url=f"{stack.serving_rest_url}/v1/models/kiln-readiness-probe",
            healthy=lambda r: r.status_code == 404 and "error" in r.json(),
        ),
        Service(
            name="airflow-api-server",
            ports=(stack.ports.airflow,),
            command=["airflow", "api-server", "--host", "127.0.0.1", "--port", str(stack.ports.airflow)],
            health_url=monitor,
            healthy=_airflow_part_healthy("metadatabase"),
        ),
        Service(
            name="airflow-scheduler",
            # The scheduler serves task logs; its LocalExecutor runs the tasks.
            ports=(stack.ports.airflow_worker_logs,),
            command=[*PRELOADED_AIRFLOW, "scheduler"],
            health_url=monitor,
            healthy=_airflow_part_healthy("scheduler"),
            reap_leftovers=False,  # a killed scheduler's task processes finish their tasks
        ),
        Service(
            name="airflow-dag-processor",
            ports=(),
            command=["airflow", "dag-processor"],
            health_url=monitor,
            healthy=_airflow_part_healthy("dag_processor"),
        ),
        Service(
            name="airflow-triggerer",
            ports=(stack.ports.airflow_trigger_logs,),
            command=["airflow", "triggerer"],
            health_url=monitor,
            healthy=_airflow_part_healthy("triggerer"),
        ),
        *([_celery_worker(stack)] if "CeleryExecutor" in stack.executors else []),
    ]


def _celery_worker(stack: StackLayout) -> Service:
    # Task logs are written to the shared AIRFLOW_HOME/logs, where the api-server reads them: the
    # worker needs no log server of its own (the scheduler's owns the worker-logs port).
    return Service(
        name="airflow-celery-worker",
        ports=(),
        command=[*PRELOADED_AIRFLOW, "celery", "worker", "--queues", ",".join(stack.celery_queues),
                 "--concurrency", "2", "--skip-serve-logs"],
        health_url=None,
        healthy=lambda response: False,  # not asked: no health URL
        reap_leftovers=False,  # like the scheduler: a task it started finishes and reports
    )


@dataclass(frozen=True)
class Service:
    """One supervised program and how to tell it is ready."""

    name: str
    ports: tuple[int, ...]
    command: list[str]
    health_url: str | None  # None: healthy is running, as supervisord sees it
    healthy: Callable[[httpx.Response], bool]
    reap_leftovers: bool = True

    @property
    def program(self) -> Program:
        return Program(self.name, self.command, reap_leftovers=self.reap_leftovers)

    def is_healthy(self, stack: StackLayout) -> bool:
        if self.health_url is None:
            try:
                return stack.supervisor.states()[self.name].state == "RUNNING"
            except (SupervisorError, KeyError):
                return False
        try:
            return self.healthy(httpx.get(self.health_url, timeout=3))
        except (httpx.HTTPError, ValueError):
            return False

    def _gave_up(self, stack: StackLayout) -> bool:
        try:
            return stack.supervisor.states()[self.name].state == "FATAL"
        except (SupervisorError, KeyError):
            return False

    def wait_healthy(self, stack: StackLayout, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_healthy(stack):
                return
            if self._gave_up(stack):  # supervisord stopped retrying a service that dies as it starts
                break
            time.sleep(0.5)
        tail = " | ".join(log_tail(stack.supervisor.program_log(self.name), 3))
        where = f"at {self.health_url}" if self.health_url else "(not running)"
        verdict = "kept dying as it started (FATAL)" if self._gave_up(stack) else \
            f"not healthy {where} after {timeout:.0f}s"
        raise StackError(f"{self.name} {verdict}; log: {tail}")


def _airflow_part_healthy(part: str) -> Callable[[httpx.Response], bool]:
    """Airflow's monitor endpoint reports each component (by its heartbeat); one predicate per part."""

    def healthy(response: httpx.Response) -> bool:
        return response.status_code == 200 and response.json().get(part, {}).get("status") == "healthy"

    return healthy
