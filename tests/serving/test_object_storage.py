"""The deployer and kiln-model-server's version discovery on an `s3://` model base path (moto's S3 server on
loopback), without a model: a version counts only once its `saved_model.pb` is there, a retried upload is a
no-op, other content under a shipped version number is refused."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from common import download_cache, storage
from serving.deployer import DeployError, ServingDeployer, read_config, write_config
from serving.model_server.discovery import SETTLE_SECONDS, VersionDiscovery
from serving.target import ServingTarget


class NothingServed:
    """The deployer's gRPC side, for what needs no server: no versions loaded."""

    def version_states(self, model: str) -> dict[int, str]:
        return {}


def version_folder(root: Path, content: str) -> Path:
    (root / "variables").mkdir(parents=True)
    (root / "variables" / "variables.index").write_text(content)
    (root / "saved_model.pb").write_text(f"pb {content}")
    return root


@pytest.fixture
def deployer(s3) -> ServingDeployer:
    prefix = s3.url(f"deploy-{uuid.uuid4().hex[:6]}")
    target = ServingTarget(grpc_address="127.0.0.1:1", rest_url="http://127.0.0.1:1",
                           model_base_path=f"{prefix}/models", config_file=f"{prefix}/models.config")
    return ServingDeployer(target, model_service=NothingServed())


def test_staging_on_s3_is_complete_or_absent_and_never_overwrites(deployer, s3, tmp_path) -> None:
    first = version_folder(tmp_path / "first", "one")
    url = deployer.stage_version("m", 1, first, {})
    assert url == f"{deployer.base}/m/1" and deployer.is_staged("m", 1)
    assert deployer.stage_version("m", 1, first, {}) == url, "a retry with the same content is a no-op"
    with pytest.raises(DeployError, match="already exists with different content"):
        deployer.stage_version("m", 1, version_folder(tmp_path / "other", "two"), {})

    # An upload that died before saved_model.pb: not staged, and the next stage_version replaces the leftovers.
    storage.upload_dir(version_folder(tmp_path / "half", "stale"), f"{deployer.base}/m/2")
    storage.url_to_fs(url)[0].rm_file(f"{deployer.base.removeprefix('s3://')}/m/2/saved_model.pb")
    assert not deployer.is_staged("m", 2)
    deployer.stage_version("m", 2, first, {})
    assert storage.read_text(f"{deployer.base}/m/2/variables/variables.index") == "one"

    deployer.unstage("m", 2)
    assert not storage.exists(f"{deployer.base}/m/2") and deployer.is_staged("m", 1)
    config = read_config(deployer.target.config_file)  # missing: empty
    config.model_config_list.config.add(name="m", base_path=f"{deployer.base}/m")
    write_config(deployer.target.config_file, config)
    assert read_config(deployer.target.config_file).model_config_list.config[0].base_path == f"{deployer.base}/m"


def test_a_tflite_version_on_s3_is_staged_once_its_model_file_is_there(deployer, tmp_path) -> None:
    """A TFLite version holds `model.tflite` and no SavedModel (the server's format follows the folder)."""
    lite = tmp_path / "lite"
    (lite / "assets.extra").mkdir(parents=True)
    (lite / "assets.extra" / "tf_serving_warmup_requests").write_text("warmup")
    (lite / "model.tflite").write_bytes(b"TFL3")
    deployer.stage_version("m", 3, lite, {})
    assert deployer.is_staged("m", 3)
    storage.url_to_fs(deployer.base)[0].rm_file(f"{deployer.base.removeprefix('s3://')}/m/3/model.tflite")
    assert not deployer.is_staged("m", 3), "without its model file a folder is not a version"


def test_model_server_discovers_settled_versions_on_s3_from_a_local_cache(s3, tmp_path) -> None:
    base = s3.url(f"discover-{uuid.uuid4().hex[:6]}", "m")
    storage.upload_dir(version_folder(tmp_path / "v1", "one"), f"{base}/1", last=["saved_model.pb"])
    half = version_folder(tmp_path / "v2", "two")
    (half / "saved_model.pb").unlink()
    storage.upload_dir(half, f"{base}/2")  # no saved_model.pb yet: not a version
    storage.write_text(f"{base}/.staging-3/saved_model.pb", "not numeric")
    discovery = VersionDiscovery(prefer_tflite=False, cache_dir=str(tmp_path / "cache"))

    scan = discovery.scan(base)
    assert scan.found == {} and scan.settling, "first sight: settling"
    assert scan.present == {1, 2}, "numeric folders, loadable or not"
    time.sleep(SETTLE_SECONDS + 0.05)
    scan = discovery.scan(base)
    assert list(scan.found) == [1] and not scan.settling
    local = Path(scan.found[1])
    assert local.is_relative_to(tmp_path / "cache")
    assert (local / "variables" / "variables.index").read_text() == "one"
    assert local in download_cache._holds.held(), "held while it may be served"
    storage.remove(f"{base}/1", first=["saved_model.pb"])
    assert 1 not in discovery.scan(base).present
    assert local not in download_cache._holds.held(), "let go once gone: the cache's bound may remove it"
    assert discovery.scan(s3.url("no-such-folder")).found is None
