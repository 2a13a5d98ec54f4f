"""Serving follows the MLflow registry: its aliases are the desired state, TF Serving is brought to it.

`champion` is served as `stable`, `challenger` as `canary`, and `previous-champion` stays loaded without
a label (the rollback target); every other version is unloaded and its folder removed. A version the
model base path does not hold (collected earlier, or a fresh server) is materialized from its MLflow
`tf_serving/` artifact: the exact folder register logged. Whoever changes the aliases — a DAG run's
push, verify, approve and promote, `kiln promote` / `kiln rollback`, someone in the MLflow UI — then syncs (the
`kiln_serving_sync` DAG does every few minutes), and the server does what the registry says. A sync
holds the deployer's lock from reading the aliases to the server's last change, so two syncs never
apply an older alias reading over a newer one.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.deployer import DeployError, ServedModel, ServingDeployer
from tasks import tracking
from tasks.context import StepContext
from tasks.model_registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    aliases,
    download_version,
    is_registered,
    move_alias,
    promote,
    restore,
    rollback,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)


class SyncError(RuntimeError):
    """The registry names something the server cannot be brought to; one line naming it."""


class NotRegistered(SyncError):
    """The pipeline has registered no model yet: there is nothing to serve, and nothing is unloaded."""


@dataclass(frozen=True)
class DesiredServing:
    stable: int | None
    canary: int | None
    keep: tuple[int, ...]

    @property
    def versions(self) -> list[int]:
        return sorted({v for v in (self.stable, self.canary, *self.keep) if v is not None})


@dataclass(frozen=True)
class SyncResult:
    registered_model: str
    served_model: str
    aliases: dict[str, int]
    before: ServedModel
    after: ServedModel
    materialized: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return (self.before.versions, self.before.labels) != (self.after.versions, self.after.labels)


def desired_serving(registry_aliases: dict[str, int]) -> DesiredServing:
    stable = registry_aliases.get(CHAMPION)
    canary = registry_aliases.get(CHALLENGER)
    canary = None if canary == stable else canary
    previous = registry_aliases.get(PREVIOUS)
    keep = (previous,) if previous is not None and previous not in (stable, canary) else ()
    return DesiredServing(stable=stable, canary=canary, keep=keep)


def sync(client: MlflowClient, registered_model: str, served_model: str, deployer: ServingDeployer) -> SyncResult:
    """Bring `served_model` on the deployer's server to what `registered_model`'s aliases say."""
    if not is_registered(client, registered_model):
        # Unloading everything because a name is wrong (or MLflow is another one) would be an outage.
        raise NotRegistered(f"registered model {registered_model!r} does not exist in MLflow; serving left as is")
    with deployer.lock():
        wanted_aliases = aliases(client, registered_model)
        wanted = desired_serving(wanted_aliases)
        before = deployer.served(served_model)
        materialized = [v for v in wanted.versions if not deployer.is_staged(served_model, v)]
        for version in materialized:
            _materialize(client, registered_model, served_model, version, deployer)
        try:
            after = deployer.reconcile(served_model, stable=wanted.stable, canary=wanted.canary, keep=wanted.keep)
        except DeployError as exc:
            for version in materialized:  # downloaded for this attempt only
                deployer.unstage(served_model, version)
            raise SyncError(f"{served_model}: could not serve what {registered_model}'s aliases "
                            f"{wanted_aliases} say: {exc}") from exc
    result = SyncResult(registered_model, served_model, wanted_aliases, before, after, materialized)
    log.info("sync %s -> %s: %s (labels %s, versions %s)", registered_model, served_model,
             "changed" if result.changed else "already in sync", after.labels, list(after.versions))
    return result


@dataclass(frozen=True)
class AliasChange:
    before: dict[str, int]  # the aliases before the change
    sync: SyncResult  # the server brought to them after it


class RegistryServing:
    """One pipeline's serving, moved with its MLflow registry: check the server, stage a version, move aliases,
    sync the server to them, and put the aliases back when the server cannot follow. Push, verify, approve,
    promote, `kiln promote / rollback / sync` and the kiln_serving_sync DAG all go through this."""

    def __init__(self, client: MlflowClient, registered_model: str, served_model: str, deployer: ServingDeployer,
                 by: str):
        self.client, self.registered_model, self.served_model = client, registered_model, served_model
        self.deployer, self.by = deployer, by  # `by`: who moves the aliases (a DAG run, an operator)

    @classmethod
    def of_run(cls, ctx: StepContext, approved_by: str | None = None) -> RegistryServing:
        """The run's MLflow and TF Serving, for the pipeline `ctx` belongs to; alias moves are by the DAG run (and
        the person who approved them)."""
        by = f"{ctx.dag_id} run {ctx.run_id}"
        deployer = ServingDeployer(ctx.require_serving(), request_logs={ctx.served_model_name: ctx.request_log})
        return cls(tracking.client(ctx), ctx.registered_model_name, ctx.served_model_name, deployer,
                   by=f"approved by {approved_by} in {by}" if approved_by else by)

    def check_server(self) -> ServedModel:
        """What the server serves now; a server that is down fails here, before anything changes."""
        return self.deployer.served(self.served_model)

    def aliases(self) -> dict[str, int]:
        return aliases(self.client, self.registered_model)

    def sync(self) -> SyncResult:
        return sync(self.client, self.registered_model, self.served_model, self.deployer)

    def push_canary(self, version: int, folder: Path, why: str) -> AliasChange:
        """Stage `folder` as `version`, make it `challenger` and load it as canary; a push that fails leaves no
        folder behind."""
        self.deployer.stage_version(self.served_model, version, folder, {})
        try:
            return self._move(lambda: move_alias(self.client, self.registered_model, CHALLENGER, version, why,
                                                 self.by), f"push of v{version} failed")
        except Exception:
            self.deployer.unstage(self.served_model, version)
            raise

    def withdraw(self, version: int, why: str) -> SyncResult:
        """Take a canary off the server: `challenger` is removed (with `why` in the alias history), then a sync
        unloads it. Champion and stable are not touched."""
        if self.aliases().get(CHALLENGER) == version:
            move_alias(self.client, self.registered_model, CHALLENGER, None, why, self.by)
        return self.sync()

    def promote(self, version: int, why: str) -> AliasChange:
        """champion -> `version` (the old champion becomes previous-champion, challenger is consumed), then sync."""
        return self._move(lambda: promote(self.client, self.registered_model, version, why, self.by),
                          f"promotion of v{version} undone: the server could not follow")

    def rollback(self, why: str) -> AliasChange:
        """champion <-> previous-champion, then sync; a second rollback returns to where the first started."""
        return self._move(lambda: rollback(self.client, self.registered_model, why, self.by),
                          "rollback undone: the server could not follow")

    def _move(self, move: Callable[[], Any], undo_why: str) -> AliasChange:
        """Change the aliases with `move`, then sync. When the server cannot follow (the reconcile has already
        put it back), the aliases are put back too, with `undo_why` in the history, and the error raised."""
        self.check_server()
        before = self.aliases()
        move()
        try:
            return AliasChange(before, self.sync())
        except Exception:
            restore(self.client, self.registered_model, before, undo_why, self.by)
            raise


def _materialize(client: MlflowClient, registered_model: str, served_model: str, version: int,
                 deployer: ServingDeployer) -> None:
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="kiln-sync-") as scratch:
        try:
            downloaded = download_version(client, registered_model, version, Path(scratch))
        except (MlflowException, OSError) as exc:
            raise SyncError(f"{registered_model} v{version}: its tf_serving/ artifact could not be downloaded "
                            f"({str(exc).splitlines()[0]})") from exc
        deployer.stage_version(served_model, version, downloaded.version_folder, {})
    log.info("sync: %s v%s materialized from MLflow into the model base path", registered_model, version)
