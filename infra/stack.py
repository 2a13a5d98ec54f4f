"""The embedded stack behind `kiln up` / `kiln down`: Airflow standalone, MLflow server and
kiln-model-server as local processes on 127.0.0.1, with all state under KILN_HOME.

Each service runs in its own session (process group), so `down` stops it with everything it
spawned (Airflow's scheduler, api-server, task processes...). `stack.json` records the ports and
pids so `run`, `status` and `down` find the stack again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from infra.processes import log_tail, port_is_free, stop_process_group

REPO_ROOT = Path(__file__).resolve().parents[1]
STACK_FILE = "stack.json"


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

    def env(self) -> dict[str, str]:
        """The environment of every service and, through Airflow, of every task."""
        venv_bin = str(Path(sys.executable).parent)
        env = dict(os.environ)
        env.update(
            {
                "PATH": f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
                "TF_USE_LEGACY_KERAS": "1",
                "TF_CPP_MIN_LOG_LEVEL": "1",
                "KILN_HOME": str(self.home),
                "KILN_ARTIFACT_ROOT": str(self.home / "artifacts"),
                "KILN_SERVING_GRPC": f"127.0.0.1:{self.ports.serving_grpc}",
                "KILN_SERVING_REST": self.serving_rest_url,
                "KILN_SERVING_MODELS": str(self.serving_models),
                "KILN_SERVING_CONFIG": str(self.serving_config),
                "MLFLOW_TRACKING_URI": self.mlflow_url,
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
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
            }
        )
        return env

    def services(self) -> list[Service]:
        mlflow_dir = self.home / "mlflow"
        return [
            Service(
                name="mlflow",
                port=self.ports.mlflow,
                command=[
                    "mlflow", "server",
                    "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                    "--artifacts-destination", str(mlflow_dir / "artifacts"),
                    "--host", "127.0.0.1", "--port", str(self.ports.mlflow), "--workers", "1",
                ],
                health_url=f"{self.mlflow_url}/health",
                healthy=lambda r: r.status_code == 200,
            ),
            Service(
                name="model-server",
                port=self.ports.serving_rest,
                extra_ports=(self.ports.serving_grpc,),
                command=[
                    "kiln-model-server",
                    f"--port={self.ports.serving_grpc}",
                    f"--rest_api_port={self.ports.serving_rest}",
                    f"--model_config_file={self.serving_config}",
                    "--file_system_poll_wait_seconds=1",
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
                name="airflow",
                port=self.ports.airflow,
                extra_ports=(self.ports.airflow_worker_logs, self.ports.airflow_trigger_logs),
                command=["airflow", "standalone"],
                health_url=f"{self.airflow_url}/api/v2/monitor/health",
                healthy=_airflow_healthy,
            ),
        ]

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self, report: Callable[[str], None] = print, timeout: float = 240) -> None:
        if self.is_recorded():
            raise StackError(f"a stack is already recorded in {self.home / STACK_FILE}; run `kiln down` first")
        services = self.services()
        for service in services:
            for port in (service.port, *service.extra_ports):
                if not port_is_free(port):
                    raise StackError(f"port {port} ({service.name}) is already in use on 127.0.0.1")
        for folder in ("logs", "data", "artifacts", "runs", "mlflow", "serving/models", "airflow"):
            (self.home / folder).mkdir(parents=True, exist_ok=True)
        if not self.serving_config.exists():
            self.serving_config.write_text("model_config_list {\n}\n")
        env = self.env()
        started: dict[str, int] = {}
        try:
            for service in services:
                started[service.name] = service.start(self.home, env)
                self._record(started)
            for service in services:
                t0 = time.monotonic()
                service.wait_healthy(self.home, timeout)
                report(f"{service.name:13s} ready on 127.0.0.1:{service.port} ({time.monotonic() - t0:.1f}s)")
        except BaseException:
            self.down(report=lambda _msg: None)
            raise

    def _record(self, pids: dict[str, int]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        payload = {"ports": asdict(self.ports), "pids": pids}
        tmp = self.home / f".{STACK_FILE}.tmp"
        tmp.write_text(json.dumps(payload, indent=2))
        os.replace(tmp, self.home / STACK_FILE)

    def is_recorded(self) -> bool:
        return (self.home / STACK_FILE).exists()

    @classmethod
    def load(cls, home: Path) -> Stack:
        try:
            payload = json.loads((home / STACK_FILE).read_text())
        except FileNotFoundError:
            raise StackError(f"no stack is running for KILN_HOME={home}; start one with `kiln up`") from None
        return cls(home=home, ports=StackPorts(**payload["ports"]))

    def pids(self) -> dict[str, int]:
        try:
            return json.loads((self.home / STACK_FILE).read_text())["pids"]
        except FileNotFoundError:
            return {}

    def down(self, report: Callable[[str], None] = print, timeout: float = 30) -> None:
        for name, pid in reversed(list(self.pids().items())):
            stop_process_group(pid, timeout)
            report(f"{name:13s} stopped")
        (self.home / STACK_FILE).unlink(missing_ok=True)

    def health(self) -> dict[str, bool]:
        result = {}
        for service in self.services():
            try:
                result[service.name] = service.healthy(httpx.get(service.health_url, timeout=3))
            except (httpx.HTTPError, ValueError):
                result[service.name] = False
        return result


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    command: list[str]
    health_url: str
    healthy: Callable[[httpx.Response], bool]
    extra_ports: tuple[int, ...] = ()

    def log_path(self, home: Path) -> Path:
        return home / "logs" / f"{self.name}.log"

    def start(self, home: Path, env: dict[str, str]) -> int:
        log = self.log_path(home).open("ab")
        try:
            process = subprocess.Popen(
                self.command, cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        except FileNotFoundError:
            raise StackError(f"{self.name}: command {self.command[0]!r} not found; is the venv's bin/ on PATH?") from None
        finally:
            log.close()
        return process.pid

    def wait_healthy(self, home: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.healthy(httpx.get(self.health_url, timeout=3)):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.5)
        tail = " | ".join(log_tail(self.log_path(home), 3))
        raise StackError(f"{self.name} not healthy at {self.health_url} after {timeout:.0f}s; log: {tail}")


def _airflow_healthy(response: httpx.Response) -> bool:
    if response.status_code != 200:
        return False
    body = response.json()
    return all(body.get(part, {}).get("status") == "healthy" for part in ("metadatabase", "scheduler", "dag_processor"))
