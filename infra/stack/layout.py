"""What an embedded stack is and where its parts live: its KILN_HOME, ports and placement profile, the
executors and fleet services that profile needs, its folders and URLs. `kiln up` and `kiln down` are in
`infra.stack.stack`; the services it starts, and their environment, are built from this."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from infra import DEFAULT_HOME
from infra.airflow.placement import load_profile, placements
from infra.stack.fleet_services import FleetServices
from infra.stack.supervision import Supervisor
from tasks.config import PlacementConfig, StepPlacement

KUBERNETES = "KubernetesExecutor"


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
    home = explicit or os.environ.get("KILN_HOME") or DEFAULT_HOME
    return Path(home).resolve()


@dataclass
class StackLayout:
    """A stack as `kiln up` is given it, and what follows from that: its executors, placements, folders, URLs."""

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
