"""Model lifecycle on a live kiln-model-server started with an empty config, as the embedded stack runs it:
reload by RPC (blocking, labels, removal), version polling, half-written folders, warmup, and a label swap
under load with zero failed requests."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import get_model_status_pb2, model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from tests.servers import wait_for
from tests.serving.conftest import write_warmup

pytestmark = pytest.mark.slow
State = get_model_status_pb2.ModelVersionStatus.State


@pytest.fixture(scope="module")
def server(server_factory, tmp_path_factory):
    config = tmp_path_factory.mktemp("lifecycle") / "models.config"
    config.write_text("model_config_list {}\n")
    return server_factory(
        f"--model_config_file={config}", "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0"
    )


@pytest.fixture(scope="module")
def model_service(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


@pytest.fixture(scope="module")
def rest(server):
    with httpx.Client(base_url=server.rest_url, timeout=30) as client:
        yield client


def config_text(*models: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(
        "model_config_list {" + "".join(f" config {{ {m} }}" for m in models) + " }",
        model_server_config_pb2.ModelServerConfig(),
    )


def model_entry(name: str, base: Path, policy: str = "", labels: dict[str, int] | None = None) -> str:
    text = f'name: "{name}" base_path: "{base}" model_platform: "tensorflow" {policy}'
    return text + "".join(f' version_labels {{ key: "{k}" value: {v} }}' for k, v in (labels or {}).items())


def specific(*versions: int) -> str:
    return "model_version_policy { specific { " + " ".join(f"versions: {v}" for v in versions) + " } }"


def reload(model_service, *models: str):
    request = model_management_pb2.ReloadConfigRequest(config=config_text(*models))
    return model_service.HandleReloadConfigRequest(request, timeout=60)


def states(model_service, name: str) -> list[tuple[int, int]]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    return [
        (s.version, s.state) for s in model_service.GetModelStatus(request, timeout=10).model_version_status
    ]


def predict(rest, url: str, x: float) -> float:
    response = rest.post(url, json={"instances": [x]})
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def test_reload_blocks_until_added_model_is_available_and_removal_keeps_end(
    model_service, rest, test_models, tmp_path
):
    test_models.install("half_plus_two", tmp_path / "alpha", 1)
    response = reload(model_service, model_entry("alpha", tmp_path / "alpha"))
    assert response.status.error_code == 0
    assert states(model_service, "alpha") == [(1, State.AVAILABLE)]
    assert predict(rest, "/v1/models/alpha:predict", 2.0) == 3.0
    reload(model_service)
    assert states(model_service, "alpha") == [(1, State.END)]
    response = rest.post("/v1/models/alpha:predict", json={"instances": [2.0]})
    assert (response.status_code, response.json()["error"]) == (
        404,
        "Servable not found for request: Latest(alpha)",
    )


def test_reload_rejects_invalid_configs(model_service, tmp_path):
    cases = [
        (model_entry("m", tmp_path) + "} config { " + model_entry("m", tmp_path), grpc.StatusCode.INVALID_ARGUMENT,
         "Illegal to list model m multiple times in config list"),
        ('name: "m" base_path: "relative/path" model_platform: "tensorflow"', grpc.StatusCode.INVALID_ARGUMENT,
         "Expected model m to have an absolute path or URI; got base_path()=relative/path"),
        (model_entry("m", tmp_path, labels={"stable": 3}), grpc.StatusCode.FAILED_PRECONDITION,
         "Request to assign label to version 3 of model m, which is not currently available for inference"),
    ]  # fmt: skip
    for entry, code, message in cases:
        with pytest.raises(grpc.RpcError) as caught:
            reload(model_service, entry)
        assert (caught.value.code(), caught.value.details()) == (code, message)


def test_failed_warmup_fails_the_load_and_good_warmup_loads(model_service, rest, test_models, tmp_path):
    good = test_models.install("half_plus_two", tmp_path / "warm_good", 1)
    write_warmup(good, good=True)
    bad = test_models.install("half_plus_two", tmp_path / "warm_bad", 1)
    write_warmup(bad, good=False)
    reload(model_service, model_entry("warm_good", tmp_path / "warm_good"))
    assert predict(rest, "/v1/models/warm_good:predict", 4.0) == 4.0
    with pytest.raises(grpc.RpcError) as caught:
        reload(
            model_service,
            model_entry("warm_good", tmp_path / "warm_good"),
            model_entry("warm_bad", bad.parent),
        )
    assert caught.value.code() == grpc.StatusCode.UNKNOWN
    assert caught.value.details().startswith(
        "1 model(s) did not become available: {{{name: warm_bad version: 1} due to error: DATA_LOSS: "
    )
    assert "Please verify your warmup data is in TFRecord format." in caught.value.details()
    status = rest.get("/v1/models/warm_bad").json()["model_version_status"]
    assert status[0]["state"] == "END" and status[0]["status"]["error_code"] == "DATA_LOSS"
    reload(model_service)


def test_polling_loads_new_versions_and_never_half_written_ones(model_service, rest, test_models, tmp_path):
    base = tmp_path / "polled"
    test_models.install("half_plus_two", base, 1)
    reload(model_service, model_entry("polled", base))
    # A version folder without saved_model.pb yet, and a complete one still under a staging name.
    partial = base / "3"
    partial.mkdir()
    (partial / "variables").mkdir()
    test_models.install("half_plus_three", base, 2)
    os.rename(base / "2", base / ".tmp-2")
    wait_for(lambda: "saw" if rest.get("/v1/models/polled").status_code == 200 else None)
    threading.Event().wait(2.5)  # two poll periods in which nothing may load
    assert states(model_service, "polled") == [(1, State.AVAILABLE)]
    os.rmdir(partial / "variables")
    os.rmdir(partial)
    os.rename(base / ".tmp-2", base / "2")
    wait_for(
        lambda: states(model_service, "polled") == [(2, State.AVAILABLE), (1, State.END)], message="swap"
    )
    assert predict(rest, "/v1/models/polled:predict", 2.0) == 4.0
    reload(model_service)


def test_label_swap_under_load_has_zero_failed_requests(model_service, test_models, server, tmp_path):
    base = tmp_path / "swap"
    test_models.install("half_plus_two", base, 1)
    reload(model_service, model_entry("swap", base, specific(1)))
    reload(model_service, model_entry("swap", base, specific(1), {"stable": 1}))

    stop, failures, seen = threading.Event(), [], set()

    def load_generator():
        with httpx.Client(base_url=server.rest_url, timeout=30) as client:
            while not stop.is_set():
                response = client.post("/v1/models/swap/labels/stable:predict", json={"instances": [2.0]})
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    seen.add(response.json()["predictions"][0])

    workers = [threading.Thread(target=load_generator) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: 3.0 in seen, message="first answers")
        test_models.install("half_plus_three", base, 2)  # temp folder, then rename
        reload(model_service, model_entry("swap", base, specific(1, 2), {"stable": 1}))
        wait_for(lambda: (2, State.AVAILABLE) in states(model_service, "swap"), message="version 2 AVAILABLE")
        reload(model_service, model_entry("swap", base, specific(1, 2), {"stable": 2}))
        wait_for(lambda: 4.0 in seen, message="answers from version 2")
        reload(model_service, model_entry("swap", base, specific(2), {"stable": 2}))
        wait_for(lambda: (1, State.END) in states(model_service, "swap"), message="version 1 unloaded")
        count_after_unload = len(seen)
        threading.Event().wait(0.3)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert failures == []
    assert seen == {3.0, 4.0} and count_after_unload == 2
    assert states(model_service, "swap") == [(2, State.AVAILABLE), (1, State.END)]


def test_moving_an_existing_label_to_an_unavailable_version_is_refused(model_service, test_models, tmp_path):
    base = tmp_path / "labels"
    test_models.install("half_plus_two", base, 1)
    reload(model_service, model_entry("labels", base, specific(1)))
    reload(model_service, model_entry("labels", base, specific(1), {"stable": 1}))
    with pytest.raises(grpc.RpcError) as caught:
        reload(model_service, model_entry("labels", base, specific(1, 2), {"stable": 2}))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Request to assign label to version 2 of model labels" in caught.value.details()
