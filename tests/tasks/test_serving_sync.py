"""Serving follows the MLflow registry: a sync, `kiln promote` and `kiln rollback` against a live
kiln-model-server and a SQLite MLflow, with stand-in models registered the way register logs them."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from infra.cli.serving_ops import OperatorError, PipelineServing, promote_version, rollback_champion
from serving.client import RestClient
from serving.deployer import ServingDeployer, read_config
from tasks.config import load_config
from tasks.model_registry import CHAMPION, PREVIOUS, RegistryError, aliases, history, move_alias
from tasks.serving_sync import NotRegistered, SyncError, desired_serving, sync
from tasks.snapshot import Deployment
from tests.load import SteadyLoad
from tests.registry import register_stand_ins
from tests.stand_in_models import ROW
from tests.tasks.conftest import digits_pipeline

pytestmark = pytest.mark.slow


def test_the_desired_state_is_read_from_the_aliases() -> None:
    assert desired_serving({}).versions == []
    wanted = desired_serving({"champion": 3, "challenger": 4, "previous-champion": 2})
    assert (wanted.stable, wanted.canary, wanted.keep) == (3, 4, (2,))
    assert desired_serving({"champion": 3, "challenger": 3}).canary is None


@pytest.fixture(scope="module")
def registered(tmp_path_factory, mlflow_store) -> dict:
    """Versions 1-4; version 3 is not blessed, version 4's weights are corrupt (it registers, no server loads it)."""
    name = f"sync-{uuid.uuid4().hex[:8]}"
    register_stand_ins(mlflow_store, name, tmp_path_factory.mktemp("sync-models"), (1, 2, 3, 4), corrupt=(4,),
                       unblessed=(3,))
    return {"name": name, "client": MlflowClient(mlflow_store)}


def _serving(tmp_path: Path, registered: dict, mlflow_store: str, model_server, tiny_digits_csv) -> PipelineServing:
    config = load_config(digits_pipeline(tmp_path, tiny_digits_csv, registry={"model_name": registered["name"]}))
    endpoints = {"rest_url": model_server.rest_url, "grpc_address": model_server.grpc_address,
                 "model_base_path": str(model_server.model_base_path), "config_file": str(model_server.config_file)}
    from tasks.context import ServingEndpoints

    return PipelineServing.of(config, Deployment(artifact_root=str(tmp_path), tracking_uri=mlflow_store,
                                                 serving=ServingEndpoints(**endpoints)))


def _clear_aliases(client, name) -> None:
    for alias in list(aliases(client, name)):
        client.delete_registered_model_alias(name, alias)


def test_moving_champion_with_the_mlflow_client_alone_then_a_sync_serves_it(registered, model_server,
                                                                            mlflow_store) -> None:
    client, name = registered["client"], registered["name"]
    _clear_aliases(client, name)
    deployer = ServingDeployer(model_server)
    client.set_registered_model_alias(name, "champion", "1")
    first = sync(client, name, "digits", deployer)
    assert first.materialized == [1] and first.after.labels == {"stable": 1} and first.changed
    assert sync(client, name, "digits", deployer).changed is False, "a second sync has nothing to do"

    client.set_registered_model_alias(name, "champion", "2")  # someone in the MLflow UI
    second = sync(client, name, "digits", deployer)
    assert second.after.labels == {"stable": 2} and second.after.versions == (2,)
    with RestClient(model_server.rest_url) as rest:
        assert rest.label_version("digits", "stable") == 2
    assert not (model_server.model_base_path / "digits" / "1").exists(), "no longer wanted: collected"
    entry = read_config(model_server.config_file).model_config_list.config[0]
    assert dict(entry.version_labels) == {"stable": 2}, "a restarted server comes back as the registry says"


def test_a_sync_leaves_serving_alone_when_the_registered_model_does_not_exist(model_server, mlflow_store) -> None:
    with pytest.raises(NotRegistered, match="'no-such-model' does not exist in MLflow; serving left as is"):
        sync(MlflowClient(mlflow_store), "no-such-model", "digits", ServingDeployer(model_server))


def test_promote_and_rollback_move_the_aliases_with_history_and_serve_them_under_steady_load(
        registered, model_server, mlflow_store, tmp_path, tiny_digits_csv) -> None:
    client, name = registered["client"], registered["name"]
    _clear_aliases(client, name)
    serving = _serving(tmp_path, registered, mlflow_store, model_server, tiny_digits_csv)
    promote_version(serving, 1, None, "test")
    with SteadyLoad(model_server.rest_url, model_server.grpc_address, "digits", {"pixels": ROW}) as load:
        promoted = promote_version(serving, 2, None, "operator alice")
        assert promoted.before == {CHAMPION: 1}
        assert promoted.sync.aliases == {CHAMPION: 2, PREVIOUS: 1}
        assert promoted.sync.after.labels == {"stable": 2} and promoted.sync.after.versions == (1, 2)

        back = rollback_champion(serving, "bad latency", "operator bob")
        assert back.sync.aliases == {CHAMPION: 1, PREVIOUS: 2} and back.sync.after.labels == {"stable": 1}
        again = rollback_champion(serving, None, "operator bob")
        assert again.sync.aliases == {CHAMPION: 2, PREVIOUS: 1}, "rollback twice returns to where it started"

        with pytest.raises(SyncError, match="could not serve"):  # v4 registers but cannot load
            promote_version(serving, 4, None, "operator carol")
    assert load.requests > 50 and load.errors == [], load.errors[:3]
    assert aliases(client, name) == {CHAMPION: 2, PREVIOUS: 1}, "the failed promotion's aliases were put back"
    with RestClient(model_server.rest_url) as rest:
        assert rest.label_version("digits", "stable") == 2
        answer = rest.predict("digits", [ROW], label="stable").outputs[0]
    assert np.isclose(sum(answer["probabilities"]), 1.0, atol=1e-4)
    assert not (model_server.model_base_path / "digits" / "4").exists()

    moves = history(client, name)
    rollback = next(m for m in moves if m["why"] == "rollback: bad latency")
    assert (rollback["alias"], rollback["from_version"], rollback["to_version"], rollback["by"]) == \
        (CHAMPION, 2, 1, "operator bob")
    undone = [m for m in moves if m["why"].startswith("promotion of v4 undone")]
    assert {m["alias"] for m in undone} == {CHAMPION, PREVIOUS}


def test_an_unblessed_version_is_promoted_only_with_a_reason(registered, model_server, mlflow_store, tmp_path,
                                                             tiny_digits_csv) -> None:
    client, name = registered["client"], registered["name"]
    _clear_aliases(client, name)
    serving = _serving(tmp_path, registered, mlflow_store, model_server, tiny_digits_csv)
    with pytest.raises(OperatorError, match=rf"{name} v3 is not blessed .*give --reason"):
        promote_version(serving, 3, None, "operator")
    with pytest.raises(OperatorError, match=rf"{name} has no version 9"):
        promote_version(serving, 9, "why not", "operator")
    with pytest.raises(RegistryError, match="no previous-champion alias: there is nothing to roll back to"):
        rollback_champion(serving, None, "operator")
    assert aliases(client, name) == {}
    promoted = promote_version(serving, 3, "hotfix, evaluated by hand", "operator")
    assert promoted.sync.after.labels == {"stable": 3}
    assert history(client, name)[-1]["why"] == "operator promotion: hotfix, evaluated by hand"
    moves = len(history(client, name))
    with pytest.raises(OperatorError, match=rf"^{name} v3 is already the champion$"):
        promote_version(serving, 3, "twice", "operator")
    assert len(history(client, name)) == moves, "a refused promotion moves no alias"


def test_a_server_that_is_down_fails_a_promotion_before_any_alias_moves(registered, mlflow_store, tmp_path,
                                                                         tiny_digits_csv) -> None:
    from serving.client import ServingClientError
    from serving.target import ServingTarget
    from tests.servers import free_port

    client, name = registered["client"], registered["name"]
    _clear_aliases(client, name)
    move_alias(client, name, CHAMPION, 1, "setup", "test")
    down = ServingTarget(grpc_address=f"127.0.0.1:{free_port()}", rest_url=f"http://127.0.0.1:{free_port()}",
                         model_base_path=tmp_path / "models", config_file=tmp_path / "models.config")
    serving = _serving(tmp_path, registered, mlflow_store, down, tiny_digits_csv)
    with pytest.raises(ServingClientError):
        promote_version(serving, 2, None, "operator")
    assert aliases(client, name) == {CHAMPION: 1}
