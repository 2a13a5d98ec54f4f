"""Shared test setup: legacy Keras before TensorFlow loads, quiet TF logs, free loopback ports."""

from __future__ import annotations

import os

import pytest

import common  # noqa: F401 - TF_USE_LEGACY_KERAS before any test loads TensorFlow
from tests import xdist_groups
from tests.servers import free_port, start_server
from tests.warm_processes import warm_seams

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Session fixtures that cost a minute or more to build, and the group of the test files that use them: `make test`
# runs each group whole on one xdist worker (tests/xdist_groups.py), so the group builds them once, not once per worker.
SHARED_FIXTURE_GROUPS = {"kiln": "embedded-stack", "trained_digits": "trained-models",
                         "trained_churn": "trained-models", "trained_house": "trained-models"}
# Groups in the order they start: the longest first, so the short files fill both workers at the end.
GROUP_ORDER = ["embedded-stack", "trained-models"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test file runs whole on one worker (its module fixtures and its order hold), in a group of files that
    share an expensive session fixture, or alone. Order: the shared groups first, then files with slow tests,
    then the rest; within the end-to-end group the browser test last of all (its run registers a kiln-digits
    version, and the other digits runs count versions from 1)."""
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(xdist_groups.file_of(item.nodeid), []).append(item)
    groups, rank = {}, {}
    for file, file_items in by_file.items():
        shared = {SHARED_FIXTURE_GROUPS[name] for item in file_items for name in item.fixturenames
                  if name in SHARED_FIXTURE_GROUPS}
        groups[file] = min(shared, key=GROUP_ORDER.index) if shared else file
        slow = any(item.get_closest_marker("slow") for item in file_items)
        rank[file] = (GROUP_ORDER.index(groups[file]) if shared else len(GROUP_ORDER) + (not slow),
                      file.endswith("/test_browser.py"))
    items.sort(key=lambda item: rank[xdist_groups.file_of(item.nodeid)])  # stable: the order within a rank holds
    xdist_groups.record_groups(config, groups)


def pytest_configure(config: pytest.Config) -> None:
    xdist_groups.configure_controller(config)


def pytest_configure_node(node) -> None:
    xdist_groups.tell_worker(node)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    return xdist_groups.make_scheduler(config, log)


@pytest.fixture
def port_factory():
    """Call it for each port a test needs."""
    return free_port


@pytest.fixture(scope="session")
def tiny_digits_csv(tmp_path_factory):
    """The first 400 rows of the demo data set: enough for a >0.8 model in a few epochs."""
    from infra.cli.demo_data import write_digits_csv

    full = write_digits_csv(tmp_path_factory.mktemp("digits") / "digits.csv")
    lines = full.read_text().splitlines()
    tiny = full.with_name("tiny.csv")
    tiny.write_text("\n".join(lines[:401]) + "\n")
    return tiny


@pytest.fixture(scope="session", autouse=True)
def session_download_cache(tmp_path_factory):
    """Downloads from object storage go to a cache of this session's own (never the machine's shared one in
    the temp folder, which other runs fill); tests that use S3 get one of their own (`s3`)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KILN_CACHE_DIR", str(tmp_path_factory.mktemp("kiln-cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def warm_kiln_processes():
    """The training workers and sandbox servers that steps start in this process are forked from a Python that
    has already imported TensorFlow (tests/warm_processes.py): the same code, without its import each time."""
    with pytest.MonkeyPatch.context() as seams:
        for seam, warm in warm_seams().items():
            seams.setattr(seam, warm)
        yield


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback for the session, with the AWS_* variables set; tests take buckets of
    their own from it (`s3`, `module_s3`), so no state passes from one test to another."""
    from tests.s3 import moto_s3

    with moto_s3() as server:
        yield server


@pytest.fixture
def s3(s3_server, tmp_path, monkeypatch, request):
    """A bucket of this test's own, and a download cache of its own (kiln-model-servers it starts inherit it)."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "kiln-cache"))
    return s3_server.new_bucket(request.node.name[:30])


@pytest.fixture(scope="module")
def module_s3(s3_server, request):
    """A bucket for one module's shared fixtures (a model trained once, an MLflow server on S3)."""
    return s3_server.new_bucket(request.module.__name__.rsplit(".", 1)[-1][:30])


@pytest.fixture
def model_server(tmp_path):
    """A kiln-model-server with an empty model config and the flags `kiln up` starts it with (a version's format
    follows its folder: --prefer_tflite_model); yields its target."""
    from serving.target import ServingTarget

    config = tmp_path / "serving" / "models.config"
    config.parent.mkdir(parents=True)
    config.write_text("model_config_list {\n}\n")
    server = start_server(tmp_path, f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
                          "--max_num_load_retries=0", "--prefer_tflite_model=true")
    try:
        yield ServingTarget(grpc_address=server.grpc_target, rest_url=server.rest_url,
                            model_base_path=tmp_path / "serving" / "models", config_file=config)
    finally:
        server.stop()


@pytest.fixture
def s3_model_server(s3, tmp_path):
    """kiln-model-server reading its models.config and model base path from S3 (this test's bucket), as TF
    Serving would; yields its target."""
    from common import storage
    from serving.target import ServingTarget

    config = s3.url("serving", "models.config")
    storage.write_text(config, "model_config_list {\n}\n")
    server = start_server(tmp_path, f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
                          "--max_num_load_retries=0", "--prefer_tflite_model=true")
    try:
        yield ServingTarget(grpc_address=server.grpc_target, rest_url=server.rest_url,
                            model_base_path=s3.url("serving", "models"), config_file=config)
    finally:
        server.stop()
