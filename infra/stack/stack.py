"""The embedded stack behind `kiln up` / `kiln down`: MLflow, kiln-model-server and Airflow's
api-server, scheduler, dag-processor and triggerer as separate programs on 127.0.0.1, each supervised
by supervisord (`infra.stack.supervision`), which restarts a service that dies. All state lives under
KILN_HOME; `stack.json` records the ports and supervisord's pid so `run`, `status`
and `down` find the stack again.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from common import LEGACY_KERAS_ENV
from common.processes import log_tail, port_is_free
from infra.airflow.placement import REMAP_VARIABLE, load_profile, placements
from infra.stack.fleet_services import FleetServiceError, FleetServices
from infra.stack.supervision import Program, Supervisor, SupervisorError
from tasks.config import PlacementConfig, StepPlacement

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_FILE = "stack.json"
KUBERNETES = "KubernetesExecutor"
FLEET_DATABASES = ("airflow", "mlflow")


class StackError(RuntimeError):
    """The stack cannot start, or is not running; one line naming the service at fault."""


@dataclass(frozen=True)
class StackPorts:
    airflow: int = 8080
    mlflow: int = 5000
    serving_rest: int = 8501
    serving_grpc: int = 8500
    # Airflow's log servers bind fixed ports by default; owning them lets two stacks coexist.
    airflow_worker_logs: int = 8793
    airflow_trigger_logs: int = 8794

    @classmethod
    def from_env(cls, **explicit: int | None) -> StackPorts:
        """Explicit values win, then KILN_<NAME>_PORT variables, then the defaults."""
        values = {}
        for name, default in asdict(cls()).items():
            value = explicit.get(name)
            if value is None:
                value = int(os.environ.get(f"KILN_{name.upper()}_PORT", default))
            values[name] = value
        return cls(**values)


def kiln_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    home = explicit or os.environ.get("KILN_HOME") or REPO_ROOT / ".kiln"
    return Path(home).resolve()


@dataclass
class Stack:
    home: Path
    ports: StackPorts = field(default_factory=StackPorts)
    profile: str = "local"  # infra/profiles/<profile>.yaml: which executors the stack runs
    no_cluster: bool = False  # no Kubernetes here: the profile's KubernetesExecutor steps run locally

    # -- what runs -----------------------------------------------------------------------------
    @property
    def executors(self) -> list[str]:
        """Airflow's executors, the default first; without a cluster, LocalExecutor replaces Kubernetes."""
        wanted = load_profile(self.profile).executors
        if self.no_cluster and KUBERNETES in wanted:
            wanted = ["LocalExecutor", *[e for e in wanted if e not in (KUBERNETES, "LocalExecutor")]]
        return list(dict.fromkeys(wanted))

    @property
    def remap(self) -> dict[str, str]:
        return {KUBERNETES: "LocalExecutor"} if self.no_cluster else {}

    @property
    def fleet(self) -> FleetServices | None:
        """Postgres and Redis, for every profile but local (the embedded stack keeps SQLite)."""
        return None if self.profile == "local" else FleetServices.of(self.home)

    @property
    def placements(self) -> dict[str, StepPlacement]:
        """Where the profile puts each step on this stack (Kubernetes remapped without a cluster)."""
        return placements(PlacementConfig(profile=self.profile), self.remap)

    @property
    def celery_queues(self) -> list[str]:
        """The queues the profile's CeleryExecutor steps use (and Airflow's default queue)."""
        queues = {p.queue or "default" for p in self.placements.values() if p.executor == "CeleryExecutor"}
        return sorted(queues | {"default"})

    # -- layout --------------------------------------------------------------------------------
    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def serving_config(self) -> Path:
        return self.home / "serving" / "models.config"

    @property
    def serving_models(self) -> Path:
        return self.home / "serving" / "models"

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.airflow}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.mlflow}"

    @property
    def serving_rest_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.serving_rest}"

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.home)

    def env(self) -> dict[str, str]:
        """The environment of every service and, through Airflow, of every task."""
        venv_bin = str(Path(sys.executable).parent)
        env = dict(os.environ)
        env.update(
            {
                "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
                **LEGACY_KERAS_ENV,
                "TF_CPP_MIN_LOG_LEVEL": "1",
                "KILN_HOME": str(self.home),
                # Object storage when the operator says so (s3://bucket/artifacts), else under KILN_HOME.
                "KILN_ARTIFACT_ROOT": os.environ.get("KILN_ARTIFACT_ROOT") or str(self.home / "artifacts"),
                "KILN_SERVING_GRPC": f"127.0.0.1:{self.ports.serving_grpc}",
                "KILN_SERVING_REST": self.serving_rest_url,
                "KILN_SERVING_MODELS": str(self.serving_models),
                "KILN_SERVING_CONFIG": str(self.serving_config),
                "MLFLOW_TRACKING_URI": self.mlflow_url,
                # MLflow 3's job runner (GenAI scorer jobs, seven huey consumers, ~1.7 GB): kiln has no jobs.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": ",".join(self.executors),
                # A 2-core laptop: a few task processes at a time, not Airflow's default 32.
                "AIRFLOW__CORE__PARALLELISM": "4",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.ports.airflow),
                "AIRFLOW__API__WORKERS": "1",
                # Tasks reach the execution API through base_url; without it they dial port 8080.
                "AIRFLOW__API__BASE_URL": self.airflow_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.airflow_url}/execution/",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports.airflow_worker_logs),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports.airflow_trigger_logs),
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # One key for all components: tokens the api-server issued stay valid when it restarts,
                # and the scheduler's task tokens are accepted by the execution API.
                "AIRFLOW__API_AUTH__JWT_SECRET": self._secret("airflow-jwt-secret"),
            }
        )
        if self.remap:
            env[REMAP_VARIABLE] = ",".join(f"{k}={v}" for k, v in self.remap.items())
        if self.fleet:
            env.update(self._fleet_env(self.fleet))
        return env

    def _fleet_env(self, fleet: FleetServices) -> dict[str, str]:
        airflow_db = fleet.database_url("airflow", "postgresql+psycopg2")
        return {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
            "AIRFLOW__CELERY__BROKER_URL": fleet.redis_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{airflow_db}",
            # Stacks sharing one Redis must not take each other's tasks.
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": f"{fleet.key}:",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "2",
        }

    def _secret(self, name: str) -> str:
        """A key generated on first use and kept, readable by this user only, in KILN_HOME/secrets."""
        path = self.home / "secrets" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{name}.tmp")
            tmp.touch(mode=0o600)
            tmp.write_text(secrets.token_urlsafe(32))
            os.replace(tmp, path)
        return path.read_text().strip()

    def services(self) -> list[Service]:
        mlflow_dir = self.home / "mlflow"
        monitor = f"{self.airflow_url}/api/v2/monitor/health"
        return [
            Service(
                name="mlflow",
                ports=(self.ports.mlflow,),
                command=[
                    "mlflow", "server",
                    "--backend-store-uri", self.fleet.database_url("mlflow", "postgresql+psycopg2") if self.fleet else
                    f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                    "--artifacts-destination",
                    os.environ.get("KILN_MLFLOW_ARTIFACTS") or str(mlflow_dir / "artifacts"),
                    "--host", "127.0.0.1", "--port", str(self.ports.mlflow), "--workers", "1",
                ],
                health_url=f"{self.mlflow_url}/health",
                healthy=lambda r: r.status_code == 200,
            ),
            Service(
                name="model-server",
                ports=(self.ports.serving_rest, self.ports.serving_grpc),
                command=[
                    "kiln-model-server",
                    f"--port={self.ports.serving_grpc}",
                    f"--rest_api_port={self.ports.serving_rest}",
                    # The deployer rewrites this file on every change, so a restarted server loads
                    # the versions and labels last applied: a crash never loses which version is stable.
                    f"--model_config_file={self.serving_config}",
                    "--file_system_poll_wait_seconds=1",
                    # A version's format follows its folder: model.tflite (the compressed model) or a SavedModel.
                    "--prefer_tflite_model=true",
                    # A version that cannot load fails its push at once (TF Serving retries 5 x 60 s).
                    "--max_num_load_retries=0",
                    # A restart reloads the labels the deployer last wrote, before versions load.
                    "--allow_version_labels_for_unavailable_models=true",
                ],
                # TF Serving's own readiness probe: an unknown model answers a JSON NOT_FOUND.
                health_url=f"{self.serving_rest_url}/v1/models/kiln-readiness-probe",
                healthy=lambda r: r.status_code == 404 and "error" in r.json(),
            ),
            Service(
                name="airflow-api-server",
                ports=(self.ports.airflow,),
                command=["airflow", "api-server", "--host", "127.0.0.1", "--port", str(self.ports.airflow)],
                health_url=monitor,
                healthy=_airflow_part_healthy("metadatabase"),
            ),
            Service(
                name="airflow-scheduler",
                # The scheduler serves task logs; its LocalExecutor runs the tasks.
                ports=(self.ports.airflow_worker_logs,),
                command=["airflow", "scheduler"],
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
                ports=(self.ports.airflow_trigger_logs,),
                command=["airflow", "triggerer"],
                health_url=monitor,
                healthy=_airflow_part_healthy("triggerer"),
            ),
            *([self._celery_worker()] if "CeleryExecutor" in self.executors else []),
        ]

    def _celery_worker(self) -> Service:
        # Task logs are written to the shared AIRFLOW_HOME/logs, where the api-server reads them: the
        # worker needs no log server of its own (the scheduler's owns the worker-logs port).
        return Service(
            name="airflow-celery-worker",
            ports=(),
            command=["airflow", "celery", "worker", "--queues", ",".join(self.celery_queues),
                     "--concurrency", "2", "--skip-serve-logs"],
            health_url=None,
            healthy=lambda response: False,  # not asked: no health URL
            reap_leftovers=False,  # like the scheduler: a task it started finishes and reports
        )

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self, report: Callable[[str], None] = print, timeout: float = 240) -> None:
        if self.is_recorded():
            if self.supervisor.answers():
                raise StackError(f"a stack is already recorded in {self.home / STACK_FILE}; run `kiln down` first")
            # Nothing restarts a dead supervisord here (systemd would, on a server): `up` does, after
            # stopping what its services left running.
            report("the recorded stack's supervisord is gone: stopping what is left of the stack, then starting it")
            self.down(report=report)
        services = self.services()
        for service in services:
            for port in service.ports:
                if not port_is_free(port):
                    raise StackError(f"port {port} ({service.name}) is already in use on 127.0.0.1")
        for folder in ("logs", "data", "artifacts", "runs", "mlflow", "serving/models", "airflow"):
            (self.home / folder).mkdir(parents=True, exist_ok=True)
        if not self.serving_config.exists():
            self.serving_config.write_text("model_config_list {\n}\n")
        self._check_cluster()
        started = time.monotonic()
        if self.fleet:
            try:
                self.fleet.check_redis()
                created = self.fleet.create_databases(FLEET_DATABASES)
            except FleetServiceError as exc:
                raise StackError(str(exc)) from None
            report(f"{'postgres, redis':22s} {'created ' + ', '.join(created) if created else 'databases exist'}; "
                   f"executors {','.join(self.executors)}")
        env = self.env()
        self._migrate_airflow_db(env)
        report(f"{'airflow db':22s} migrated ({time.monotonic() - started:.1f}s)")
        for pool, slots, note in self._pools():
            self._airflow(env, ["pools", "set", pool, str(slots), note], f"airflow pools set {pool}")
            report(f"{'pool ' + pool:22s} {slots} slot(s): {note}")
        try:
            self.supervisor.write_config([s.program for s in services])
            try:
                self._record(self.supervisor.start(env))
            except SupervisorError as exc:
                raise StackError(str(exc)) from None
            for service in services:
                service.wait_healthy(self, timeout - (time.monotonic() - started))
                where = f" on 127.0.0.1:{service.ports[0]}" if service.ports else ""
                report(f"{service.name:22s} ready{where} ({time.monotonic() - started:.1f}s)")
        except BaseException:
            self.down(report=lambda _msg: None)
            raise

    def _check_cluster(self) -> None:
        if KUBERNETES not in self.executors:
            return
        kubeconfig = Path(os.environ.get("KUBECONFIG") or Path.home() / ".kube" / "config")
        if not kubeconfig.is_file() and not os.environ.get("KUBERNETES_SERVICE_HOST"):
            raise StackError(f"profile {self.profile} needs a Kubernetes cluster and none is configured (no "
                             f"{kubeconfig}, not in a cluster); `kiln up --profile {self.profile} --no-cluster` "
                             f"runs its Kubernetes steps on the LocalExecutor")

    def _pools(self) -> list[tuple[str, int, str]]:
        """The pools the profile's steps name, `gpu` sized to this machine's GPUs (at least one slot, so
        a profile's training runs here on the CPU when there is none)."""
        names = sorted({p.pool for p in self.placements.values() if p.pool})
        gpus = _gpu_count()
        return [(name, max(1, gpus), f"{gpus} GPU(s) found by nvidia-smi") if name == "gpu"
                else (name, 4, "kiln profile pool") for name in names]

    def _migrate_airflow_db(self, env: dict[str, str]) -> None:
        self._airflow(env, ["db", "migrate"], "airflow db migrate")

    def _airflow(self, env: dict[str, str], args: list[str], what: str, timeout: float = 300) -> None:
        log = self.home / "logs" / "airflow-cli.log"
        with log.open("ab") as out:
            try:
                code = subprocess.run(["airflow", *args], cwd=self.home, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                raise StackError(f"{what} did not finish within {timeout:.0f}s; log: {log}") from None
            except FileNotFoundError:
                raise StackError("command 'airflow' not found; is the venv's bin/ on PATH?") from None
        if code != 0:
            raise StackError(f"{what} failed (exit {code}): {' | '.join(log_tail(log, 3))}")

    def _record(self, supervisor_pid: int) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        payload = {"ports": asdict(self.ports), "supervisor_pid": supervisor_pid, "profile": self.profile,
                   "no_cluster": self.no_cluster, "executors": self.executors}
        tmp = self.home / f".{STACK_FILE}.tmp"
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, self.home / STACK_FILE)

    def is_recorded(self) -> bool:
        return (self.home / STACK_FILE).exists()

    def _recorded(self) -> dict:
        try:
            return json.loads((self.home / STACK_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    @classmethod
    def load(cls, home: Path) -> Stack:
        try:
            payload = json.loads((home / STACK_FILE).read_text())
        except FileNotFoundError:
            raise StackError(f"no stack is running for KILN_HOME={home}; start one with `kiln up`") from None
        return cls(home=home, ports=StackPorts(**payload["ports"]), profile=payload.get("profile", "local"),
                   no_cluster=payload.get("no_cluster", False))

    def down(self, report: Callable[[str], None] = print, timeout: float = 60, drop_databases: bool = False) -> None:
        """Stop every service through supervisord, then supervisord, then anything that outlived its
        service; report each step. The fleet's databases stay unless `drop_databases`."""
        recorded = self._recorded()
        pid = recorded.get("supervisor_pid")
        if pid:
            stray = self.supervisor.stop(pid, timeout)
            report(f"{'services':22s} stopped, supervisord too")
            if stray:
                report(f"{'leftovers':22s} stopped {len(stray)} process(es) that had outlived their service: "
                       f"{', '.join(sorted(set(stray)))}")
        fleet = FleetServices.of(self.home) if recorded.get("profile", self.profile) != "local" else None
        if fleet and drop_databases:
            try:
                fleet.drop_databases(FLEET_DATABASES)
                report(f"{'postgres':22s} dropped {', '.join(fleet.database(r) for r in FLEET_DATABASES)}")
            except FleetServiceError as exc:
                report(f"{'postgres':22s} databases not dropped: {exc}")
        (self.home / STACK_FILE).unlink(missing_ok=True)

    def health(self) -> dict[str, bool]:
        return {service.name: service.is_healthy(self) for service in self.services()}


@dataclass(frozen=True)
class Service:
    name: str
    ports: tuple[int, ...]
    command: list[str]
    health_url: str | None  # None: healthy is running, as supervisord sees it
    healthy: Callable[[httpx.Response], bool]
    reap_leftovers: bool = True

    @property
    def program(self) -> Program:
        return Program(self.name, self.command, reap_leftovers=self.reap_leftovers)

    def is_healthy(self, stack: Stack) -> bool:
        if self.health_url is None:
            try:
                return stack.supervisor.states()[self.name].state == "RUNNING"
            except (SupervisorError, KeyError):
                return False
        try:
            return self.healthy(httpx.get(self.health_url, timeout=3))
        except (httpx.HTTPError, ValueError):
            return False

    def _gave_up(self, stack: Stack) -> bool:
        try:
            return stack.supervisor.states()[self.name].state == "FATAL"
        except (SupervisorError, KeyError):
            return False

    def wait_healthy(self, stack: Stack, timeout: float) -> None:
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


def _gpu_count() -> int:
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0


def _airflow_part_healthy(part: str) -> Callable[[httpx.Response], bool]:
    """Airflow's monitor endpoint reports each component (by its heartbeat); one predicate per part."""

    def healthy(response: httpx.Response) -> bool:
        return response.status_code == 200 and response.json().get(part, {}).get("status") == "healthy"

    return healthy
