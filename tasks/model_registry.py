"""The MLflow model registry as kiln uses it: aliases only (never stages), every alias move appended to
an audit history on the registered model, and the files a version carries for later steps.

Aliases are the desired serving state (`tasks.serving_sync` makes the server follow them):
`challenger` (model- and infra-blessed, served as `canary` until promoted), `champion` (served as
`stable`), `previous-champion` (kept loaded: the rollback target). The history is a JSON list in the registered model's tag `kiln.alias_history`
(MLflow keeps registered-model tags up to 100,000 characters; the newest `HISTORY_LIMIT` moves stay).
MLflow has no compare-and-set, so two writers at the same moment could drop one entry; kiln's writers
are the pipeline's own runs (one at a time per pipeline) and the operator's CLI.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous-champion", "challenger"
HISTORY_TAG = "kiln.alias_history"
APPROVAL_TIMEOUTS_TAG = "kiln.approval_timeouts"  # how many approvals of this model went unanswered
BLESSED_TAG = "blessed"  # on each model version: true or false
HISTORY_LIMIT = 200
SERVING_ARTIFACT_PATH = "tf_serving"  # the exact version folder TF Serving runs
CONTRACT_ARTIFACT_PATH = "contract"  # preprocessing.json: the served features and the label
CONTRACT_FILE = "preprocessing.json"
MODEL_CARD = "model_card.md"
DIGEST_TAG = "kiln.artifact_sha256"  # the sha256 of the version folder that ships (common.digest)
TRAIN_STATISTICS_TAG = "kiln.train_statistics"  # the version's ExampleStatistics: the drift monitor's baseline


class RegistryError(RuntimeError):
    """A registry change that cannot be made (no such version, nothing to roll back to); one line."""


@dataclass(frozen=True)
class AliasMove:
    when: str
    alias: str
    from_version: int | None
    to_version: int | None  # None: the alias was removed
    why: str
    by: str  # which DAG run or which operator command


def aliases(client: MlflowClient, model: str) -> dict[str, int]:
    """The registered model's aliases (search results do not carry them: read the model itself)."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(model)
    except MlflowException:
        return {}
    return {alias: int(version) for alias, version in registered.aliases.items()}


def history(client: MlflowClient, model: str) -> list[dict[str, Any]]:
    tags = client.get_registered_model(model).tags
    try:
        return json.loads(tags.get(HISTORY_TAG, "[]"))
    except json.JSONDecodeError:
        log.warning("registered model %s: unreadable %s tag; starting a new history", model, HISTORY_TAG)
        return []


def move_alias(client: MlflowClient, model: str, alias: str, version: int | None, why: str, by: str) -> AliasMove | None:
    """Point `alias` at `version` (None removes it) and append the move to the history; None if no change."""
    before = aliases(client, model).get(alias)
    if before == version:
        return None
    if version is None:
        client.delete_registered_model_alias(model, alias)
    else:
        client.set_registered_model_alias(model, alias, str(version))
    move = AliasMove(when=datetime.now(UTC).isoformat(timespec="seconds"), alias=alias, from_version=before,
                     to_version=version, why=why, by=by)
    entries = [*history(client, model), asdict(move)][-HISTORY_LIMIT:]
    client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(entries))
    log.info("registry: %s@%s %s -> %s (%s; %s)", model, alias, before, version, why, by)
    return move


def promote(client: MlflowClient, model: str, version: int, why: str, by: str) -> dict[str, int]:
    """champion -> version; the old champion -> previous-champion; challenger is consumed."""
    current = aliases(client, model)
    old = current.get(CHAMPION)
    if old is not None and old != version:
        move_alias(client, model, PREVIOUS, old, f"replaced as champion by v{version}", by)
    move_alias(client, model, CHAMPION, version, why, by)
    if current.get(CHALLENGER) == version:
        move_alias(client, model, CHALLENGER, None, f"v{version} became champion", by)
    return aliases(client, model)


def rollback(client: MlflowClient, model: str, why: str, by: str) -> dict[str, int]:
    """champion <-> previous-champion: the previous champion serves again, and a second rollback undoes it."""
    current = aliases(client, model)
    champion, previous = current.get(CHAMPION), current.get(PREVIOUS)
    if previous is None:
        raise RegistryError(f"{model} has no {PREVIOUS} alias: there is nothing to roll back to")
    move_alias(client, model, CHAMPION, previous, why, by)
    if champion is not None:
        move_alias(client, model, PREVIOUS, champion, f"rolled back from v{champion}", by)
    return aliases(client, model)


def restore(client: MlflowClient, model: str, before: dict[str, int], why: str, by: str) -> dict[str, int]:
    """Put kiln's aliases back as they were (a change the server could not follow is undone)."""
    for alias in (CHAMPION, PREVIOUS, CHALLENGER):
        move_alias(client, model, alias, before.get(alias), why, by)
    return aliases(client, model)


def approval_timeouts(client: MlflowClient, model: str) -> int:
    return int(client.get_registered_model(model).tags.get(APPROVAL_TIMEOUTS_TAG, "0"))


def count_approval_timeout(client: MlflowClient, model: str) -> int:
    """One more approval of `model` timed out; the new count (a registered-model tag: it shows on the model's
    page in the MLflow UI)."""
    count = approval_timeouts(client, model) + 1
    client.set_registered_model_tag(model, APPROVAL_TIMEOUTS_TAG, str(count))
    return count


def is_registered(client: MlflowClient, model: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model)
    except MlflowException:
        return False
    return True


def describe(client: MlflowClient, model: str, description: str) -> None:
    """Keep the registered model's description current (what it is for, who serves)."""
    client.update_registered_model(model, description=description)


@dataclass(frozen=True)
class DownloadedVersion:
    version: int
    version_folder: Path  # its tf_serving/: the folder the server loads (a SavedModel or a model.tflite)
    contract: Path | None  # preprocessing.json, when the version was registered by kiln


def quiet_downloads() -> None:
    """No progress bars from MLflow's downloads: they clutter task logs and the CLI."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set(False)


def download_version(client: MlflowClient, model: str, version: int, folder: Path) -> DownloadedVersion:
    """The version's folder as served (and its contract) from its MLflow run's artifacts."""
    import mlflow

    quiet_downloads()
    run_id = client.get_model_version(model, str(version)).run_id
    version_folder = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=SERVING_ARTIFACT_PATH,
                                                              dst_path=str(folder), tracking_uri=client.tracking_uri))
    try:
        contract_dir = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CONTRACT_ARTIFACT_PATH,
                                                           dst_path=str(folder), tracking_uri=client.tracking_uri)
        contract: Path | None = Path(contract_dir) / CONTRACT_FILE
    except Exception:  # noqa: BLE001 - a version registered before kiln logged contracts has none
        contract = None
    return DownloadedVersion(version=version, version_folder=version_folder,
                             contract=contract if contract and contract.exists() else None)


def version_contract(client: MlflowClient, model: str, version: int) -> str | None:
    """The version's contract (preprocessing.json: its served features and label) as JSON text, or None when it
    was registered before kiln logged one."""
    import tempfile

    import mlflow

    quiet_downloads()
    run_id = client.get_model_version(model, str(version)).run_id
    with tempfile.TemporaryDirectory(prefix="kiln-contract-") as tmp:
        try:
            folder = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CONTRACT_ARTIFACT_PATH,
                                                         dst_path=tmp, tracking_uri=client.tracking_uri)
        except Exception:  # noqa: BLE001 - MLflow raises several kinds for an artifact that is not there
            return None
        path = Path(folder) / CONTRACT_FILE
        return path.read_text() if path.is_file() else None
