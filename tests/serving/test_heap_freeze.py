"""The heap is frozen out of garbage collection after start-up and after every load, reload and unload, so no
full collection (a pause of the whole heap TensorFlow built) runs on the request path."""

from __future__ import annotations

import gc

import pytest
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.heap import freeze_heap
from serving.model_server.manager import ManagerOptions, ModelManager
from tests.servers import wait_for
from tests.serving.fakes import FakeServable, config_for, write_version


@pytest.fixture(autouse=True)
def _unfreeze_after_each_test():
    yield
    gc.unfreeze()


def test_freeze_heap_moves_live_objects_out_of_collections():
    gc.unfreeze()
    survivor = [object() for _ in range(1000)]
    freeze_heap()
    assert gc.get_freeze_count() >= len(survivor)
    assert gc.get_count()[2] == 0  # the oldest generation is empty: a full collection walks almost nothing


def test_freeze_runs_after_the_initial_load_after_a_new_version_and_after_an_unload(tmp_path):
    freezes: list[int] = []
    manager = ModelManager(
        ManagerOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0),
        load=FakeServable,
        after_versions_change=lambda: freezes.append(1),
    )
    write_version(tmp_path, 1)
    manager.reload_config(config_for(tmp_path), initial=True)
    assert manager.resolve("m")[0] == 1
    assert len(freezes) == 1

    write_version(tmp_path, 2)  # latest-1 policy: version 2 loads, then version 1 unloads, in one reconcile
    wait_for(lambda: manager.poll_once() is not None and manager.resolve("m")[0] == 2, timeout=10)
    assert len(freezes) == 2

    manager.poll_once()  # nothing changed: no freeze (a freeze walks the whole heap once)
    assert len(freezes) == 2

    manager.reload_config(model_server_config_pb2.ModelServerConfig(model_config_list={}))
    assert len(freezes) == 3  # the model was removed and unloaded


def test_freeze_is_optional(tmp_path):
    manager = ModelManager(ManagerOptions(file_system_poll_wait_seconds=0), load=FakeServable)
    write_version(tmp_path, 1)
    manager.reload_config(config_for(tmp_path), initial=True)
    assert manager.resolve("m")[0] == 1


def test_kiln_freeze_heap_flag_defaults_on_and_can_be_turned_off():
    from serving.model_server.flags import parse_flags

    assert parse_flags([]).kiln_freeze_heap is True
    assert parse_flags(["--nokiln_freeze_heap"]).kiln_freeze_heap is False
    assert parse_flags(["--kiln_freeze_heap=false"]).kiln_freeze_heap is False


def test_a_live_server_freezes_after_start_up_and_again_after_a_reload(server_factory, test_models, tmp_path):
    import grpc
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    test_models.install("half_plus_two", tmp_path / "a", 1)
    test_models.install("half_plus_two", tmp_path / "b", 1)
    server = server_factory(f"--model_base_path={tmp_path / 'a'}", "--model_name=a")
    # after the load, and once the ports were open (just after the readiness line)
    wait_for(lambda: server.log().count("heap objects out of garbage collection") >= 2)
    frozen_at_start = server.log().count("heap objects out of garbage collection")
    request = model_management_pb2.ReloadConfigRequest(config=config_for(tmp_path / "b"))
    request.config.model_config_list.config[0].name = "b"
    with grpc.insecure_channel(server.grpc_target) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
    # b loaded and a unloaded: each reconcile that changed versions froze the heap again
    wait_for(lambda: server.log().count("heap objects out of garbage collection") >= frozen_at_start + 2)


def test_a_live_server_started_with_nokiln_freeze_heap_never_freezes(server_factory, test_models, tmp_path):
    test_models.install("half_plus_two", tmp_path / "a", 1)
    server = server_factory(f"--model_base_path={tmp_path / 'a'}", "--model_name=a", "--nokiln_freeze_heap")
    assert "heap objects out of garbage collection" not in server.log()
