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
from typing import Any

from tasks.model_registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    aliases,
    download_version,
    is_registered,
    move_alias,
    restore,
)

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
    before: Any  # serving.deployer.ServedModel
    after: Any
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


def sync(client: Any, registered_model: str, served_model: str, deployer: Any) -> SyncResult:
    """Bring `served_model` on the deployer's server to what `registered_model`'s aliases say."""
    from serving.deployer import DeployError

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


def move_and_sync(client: Any, registered_model: str, served_model: str, deployer: Any, move: Callable[[], Any],
                  undo_why: str, by: str) -> tuple[dict[str, int], SyncResult]:
    """Change the aliases with `move`, then sync. When the server cannot follow (the reconcile has already
    put it back), the aliases are put back too, with `undo_why` in the history, and the error raised.
    Returns (the aliases before, the sync)."""
    before = aliases(client, registered_model)
    move()
    try:
        return before, sync(client, registered_model, served_model, deployer)
    except Exception:
        restore(client, registered_model, before, undo_why, by)
        raise


def withdraw(client: Any, registered_model: str, served_model: str, deployer: Any, version: int, why: str,
             by: str) -> SyncResult:
    """Take a canary off the server: `challenger` is removed (with `why` in the alias history), then a sync
    unloads it. Champion and stable are not touched."""
    if aliases(client, registered_model).get(CHALLENGER) == version:
        move_alias(client, registered_model, CHALLENGER, None, why, by)
    return sync(client, registered_model, served_model, deployer)


def _materialize(client: Any, registered_model: str, served_model: str, version: int, deployer: Any) -> None:
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="kiln-sync-") as scratch:
        try:
            downloaded = download_version(client, registered_model, version, Path(scratch))
        except (MlflowException, OSError) as exc:
            raise SyncError(f"{registered_model} v{version}: its tf_serving/ artifact could not be downloaded "
                            f"({str(exc).splitlines()[0]})") from exc
        deployer.stage_version(served_model, version, downloaded.version_folder, {})
    log.info("sync: %s v%s materialized from MLflow into the model base path", registered_model, version)
