"""The embedded stack behind `kiln up` / `kiln down`: MLflow, kiln-model-server and Airflow's
api-server, scheduler, dag-processor and triggerer as separate programs on 127.0.0.1, each supervised
by supervisord (`infra.stack.supervision`), which restarts a service that dies. All state lives under
KILN_HOME; `stack.json` records the ports and supervisord's pid so `run`, `status`
and `down` find the stack again.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from common.processes import log_tail, port_is_free
from infra.stack.environment import service_env
from infra.stack.fleet_services import FleetServiceError, FleetServices
from infra.stack.layout import KUBERNETES, StackError, StackLayout, StackPorts
from infra.stack.services import Service, stack_services
from infra.stack.supervision import SupervisorError

STACK_FILE = "stack.json"
FLEET_DATABASES = ("airflow", "mlflow", "tuning")


@dataclass
class Stack(StackLayout):
    """A stack's lifecycle: `up` starts its services under supervisord and waits until each is healthy,
    `down` stops them; `stack.json` records what `load` finds again."""

    def env(self) -> dict[str, str]:
        """The environment of every service and, through Airflow, of every task."""
        return service_env(self)

    def services(self) -> list[Service]:
        return stack_services(self)

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


def _gpu_count() -> int:
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0
