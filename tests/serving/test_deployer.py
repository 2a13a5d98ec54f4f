"""The deployer against a live kiln-model-server, through the protocol only: pushes land as
canary, promotion moves stable and keeps the previous version loaded, failures put things back."""

from __future__ import annotations

import numpy as np
import pytest

from serving.client import GrpcModelService, RestClient, ServingClientError, VersionStatus
from serving.deployer import DeployError, ServingDeployer, read_config
from tests.servers import wait_for
from tests.stand_in_models import ROW, save_pixels_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    paths = {}
    for seed in (1, 2, 3):
        paths[seed] = root / f"model-{seed}"
        save_pixels_model(paths[seed], seed)
    return paths


def probabilities(target, **where):
    with RestClient(target.rest_url) as client:
        return np.array(client.predict("digits", [ROW], **where).outputs[0]["probabilities"])


def test_push_promote_push_keeps_one_rollback_version(model_server, saved_models):
    deployer = ServingDeployer(model_server)
    deployer.stage_version("digits", 1, saved_models[1], {})
    assert deployer.push_version("digits", 1).labels == {"canary": 1}
    assert deployer.reconcile("digits", stable=1).labels == {"stable": 1}
    v1 = probabilities(model_server, label="stable")

    deployer.stage_version("digits", 2, saved_models[2], {})
    pushed = deployer.push_version("digits", 2)
    assert pushed.labels == {"stable": 1, "canary": 2} and pushed.versions == (1, 2)
    assert np.allclose(probabilities(model_server, label="stable"), v1)
    assert not np.allclose(probabilities(model_server, label="canary"), v1)

    promoted = deployer.reconcile("digits", stable=2, keep=[1])  # the previous stable: the rollback target
    assert promoted.labels == {"stable": 2} and promoted.versions == (1, 2)
    on_disk = read_config(model_server.config_file).model_config_list.config[0]
    assert dict(on_disk.version_labels) == {"stable": 2}
    assert list(on_disk.model_version_policy.specific.versions) == [1, 2]

    deployer.stage_version("digits", 3, saved_models[3], {})
    deployer.push_version("digits", 3, keep=[1])
    deployer.reconcile("digits", stable=3, keep=[2])
    with GrpcModelService(model_server.grpc_address) as models:
        states = models.version_states("digits")
    assert states[3] == "AVAILABLE" and states[2] == "AVAILABLE" and states[1] == "END"


def test_staging_a_version_twice_is_a_no_op_but_new_content_is_refused(model_server, saved_models):
    deployer = ServingDeployer(model_server)
    first = deployer.stage_version("digits", 7, saved_models[1], {})
    assert deployer.stage_version("digits", 7, saved_models[1], {}) == first
    with pytest.raises(DeployError, match="already exists with different content"):
        deployer.stage_version("digits", 7, saved_models[2], {})
    leftovers = [p.name for p in first.parent.iterdir() if p.name.startswith(".staging")]
    assert leftovers == []


def test_a_version_that_fails_to_load_is_rolled_back(model_server, saved_models):
    deployer = ServingDeployer(model_server, load_timeout=60)
    deployer.stage_version("digits", 1, saved_models[1], {})
    deployer.reconcile("digits", stable=1)
    before = model_server.config_file.read_text()

    broken = deployer.stage_version("digits", 2, saved_models[2], {})
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    with pytest.raises(DeployError, match="rolled back"):
        deployer.push_version("digits", 2)
    assert model_server.config_file.read_text() == before
    assert probabilities(model_server, label="stable").shape == (10,)


def test_a_canary_reconciled_away_leaves_stable_serving(model_server, saved_models):
    deployer = ServingDeployer(model_server)
    for version in (1, 2):
        deployer.stage_version("digits", version, saved_models[version], {})
    deployer.reconcile("digits", stable=1)
    deployer.push_version("digits", 2)
    withdrawn = deployer.reconcile("digits", stable=1)
    assert withdrawn.labels == {"stable": 1} and withdrawn.versions == (1,)
    with RestClient(model_server.rest_url) as client:
        assert client.predict("digits", [ROW], label="stable").outputs[0]["digit"] in range(10)


def test_a_deployer_waits_for_anothers_lock_for_a_bounded_time(tmp_path):
    """Bounded waits (issue 11): a deployer that hangs holding the server's config lock costs another one
    `lock_timeout` seconds and an error naming the lock file."""
    import time

    from filelock import FileLock, Timeout

    from serving.target import ServingTarget

    target = ServingTarget(grpc_address="127.0.0.1:1", rest_url="http://127.0.0.1:1",
                           model_base_path=tmp_path / "models", config_file=tmp_path / "models.config")
    deployer = ServingDeployer(target, model_service=object(), lock_timeout=0.5)
    with FileLock(f"{target.config_file}.lock"):
        started = time.monotonic()
        with pytest.raises(Timeout, match=r"models\.config\.lock"), deployer.lock():
            pass
    assert 0.5 <= time.monotonic() - started < 3


class ScriptedStatuses(GrpcModelService):
    """GetModelStatus answers from a script (one answer per call, the last one repeated); no server."""

    def __init__(self, *answers: dict[int, VersionStatus]):
        super().__init__("127.0.0.1:1", timeout=1)
        self.answers = list(answers)

    def version_statuses(self, model: str) -> dict[int, VersionStatus]:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_waiting_for_a_version_tells_an_unloaded_one_from_a_failed_load():
    """GetModelStatus keeps an unloaded version as END with an OK status: a version staged again after it
    was unloaded reads END until the server's next poll loads it. That is not a failed load (issue 24)."""
    unloaded, loading = VersionStatus("END"), VersionStatus("LOADING")
    with ScriptedStatuses({1: unloaded}, {1: unloaded}, {1: loading}, {1: VersionStatus("AVAILABLE")}) as models:
        models.wait_available("digits", 1, timeout=10)
        assert models.answers == [{1: VersionStatus("AVAILABLE")}], "it waited through END and LOADING"

    failed = VersionStatus("END", error_code=3, error_message="Failed to parse warmup record")
    with ScriptedStatuses({1: loading}, {1: failed}) as models, \
            pytest.raises(ServingClientError, match="digits version 1 failed to load: INVALID_ARGUMENT: "
                                                    "Failed to parse warmup record"):
        models.wait_available("digits", 1, timeout=10)

    with ScriptedStatuses({1: unloaded}) as models, \
            pytest.raises(ServingClientError, match=r"not AVAILABLE .* after 0s \(state END\)"):
        models.wait_available("digits", 1, timeout=0.3)


def test_a_version_unloaded_from_s3_and_staged_again_is_served_again(s3_model_server, saved_models):
    """The race behind issue 24: the server unloads a version whose folder went away (its status: END, OK),
    the folder is uploaded again, and the deployer asks for it before the server's next poll has settled the
    new listing (on S3 a listing must be seen unchanged twice). The deployer waits for the load instead of
    taking END for a failure."""
    from common import storage
    from serving.deployer import COMPLETES_VERSION

    deployer = ServingDeployer(s3_model_server, load_timeout=60)
    deployer.stage_version("digits", 1, saved_models[1], {})
    deployer.stage_version("digits", 2, saved_models[2], {})  # staged, never served: the base path stays
    assert deployer.reconcile("digits", stable=1).labels == {"stable": 1}
    storage.remove(deployer.version_dir("digits", 1), first=COMPLETES_VERSION)
    wait_for(lambda: deployer.models.version_states("digits").get(1) == "END", timeout=30,
             message="the server to unload the removed version")

    deployer.stage_version("digits", 1, saved_models[1], {})
    served = deployer.reconcile("digits", stable=1)
    assert served.labels == {"stable": 1} and served.versions == (1,)
    assert deployer.models.version_states("digits") == {1: "AVAILABLE"}
    assert probabilities(s3_model_server, label="stable").shape == (10,)


def test_the_deployer_writes_the_logging_config_it_is_given_and_removes_it_when_off(model_server, saved_models,
                                                                                    tmp_path):
    from serving.target import RequestLog

    request_log = RequestLog(path=str(tmp_path / "request-logs"), sampling_rate=0.25)
    deployer = ServingDeployer(model_server, request_logs={"digits": request_log})
    deployer.stage_version("digits", 1, saved_models[1], {})
    deployer.reconcile("digits", stable=1)
    entry = read_config(model_server.config_file).model_config_list.config[0]
    assert entry.logging_config.log_collector_config.type == "file"
    assert entry.logging_config.log_collector_config.filename_prefix == request_log.path
    assert entry.logging_config.sampling_config.sampling_rate == 0.25
    # The server took the config: it logs what it serves (a file is open, or published, once a request is
    # sampled; 60 requests at 0.25 leave none sampled with probability 0.75**60, about 3e-8).
    with RestClient(model_server.rest_url) as client:
        for _ in range(60):
            client.predict("digits", [ROW], label="stable")
    wait_for(lambda: list((tmp_path / "request-logs" / "digits" / "1").glob("*.tfrecord*")), timeout=30,
             message="a request log file")

    # Nothing else changed, logging turned off: the reconcile still applies it.
    ServingDeployer(model_server, request_logs={"digits": None}).reconcile("digits", stable=1)
    assert not read_config(model_server.config_file).model_config_list.config[0].HasField("logging_config")
    # A deployer told to log puts it back; one told nothing about the model leaves its logging as it is.
    deployer.reconcile("digits", stable=1)
    ServingDeployer(model_server).reconcile("digits", stable=1)
    assert read_config(model_server.config_file).model_config_list.config[0].HasField("logging_config")
