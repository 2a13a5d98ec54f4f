"""--kiln_server_processes (kiln-only): N processes share the ports, config reloads reach all of them, and the
flag keeps one-process start-up semantics (one error line, TF Serving's exit code)."""

from __future__ import annotations

import socket
import subprocess

import grpc
import psutil
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server.flags import parse_flags
from serving.model_server.process_group import SIBLING_SOCKETS_ENV
from tests.servers import SERVER_BIN, wait_for

pytestmark = pytest.mark.slow
State = get_model_status_pb2.ModelVersionStatus.State


def test_flag_defaults_to_one_process_and_parses_a_count():
    assert parse_flags([]).kiln_server_processes == 1
    assert parse_flags(["--kiln_server_processes=2"]).kiln_server_processes == 2


@pytest.mark.parametrize("value", ["0", "-1"])
def test_fewer_than_one_process_is_a_one_line_error(value):
    result = subprocess.run(
        [SERVER_BIN, f"--kiln_server_processes={value}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 255
    assert result.stderr.strip() == f"--kiln_server_processes must be at least 1, got {value}"


def test_a_model_that_fails_to_load_ends_the_group_with_one_error_line(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")
    result = subprocess.run(
        [SERVER_BIN, "--port=0", f"--model_base_path={tmp_path}", "--kiln_server_processes=2",
         "--max_num_load_retries=0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 255
    assert result.stderr.count("Failed to start server") == 1


def children_of(server) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children()


@pytest.fixture(scope="module")
def group(server_factory, test_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("group")
    test_models.install("half_plus_two", root / "a", 1)
    test_models.install("half_plus_three", root / "b", 1)
    config = root / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "a" base_path: "{root / "a"}" model_platform: "tensorflow" }} }}\n'
    )
    server = server_factory(f"--model_config_file={config}", "--kiln_server_processes=2")
    wait_for(
        lambda: server.log().count("Exporting HTTP/REST API") == 2, timeout=120, message="both processes"
    )
    return server, root


def test_two_processes_answer_on_the_same_ports(group):
    server, _ = group
    children = children_of(server)
    assert len(children) == 2
    # The kernel spreads connections over the processes listening with SO_REUSEPORT (by a hash of the
    # client port): with 24 connections open, both processes hold some (all on one: a 2**-23 chance).
    connections = [socket.create_connection(("127.0.0.1", server.rest_port)) for _ in range(24)]
    try:
        for connection in connections:
            connection.sendall(b"GET /v1/models/a HTTP/1.1\r\nHost: x\r\n\r\n")
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        holders = {
            child.pid
            for child in children
            for conn in child.net_connections(kind="tcp")
            if conn.laddr and conn.laddr.port == server.rest_port and conn.status == psutil.CONN_ESTABLISHED
        }
        assert holders == {child.pid for child in children}
    finally:
        for connection in connections:
            connection.close()


def status_in_each_process(server, name: str) -> list[list[int]]:
    """GetModelStatus asked of every process directly, over its private socket."""
    sockets = children_of(server)[0].environ()[SIBLING_SOCKETS_ENV].split(",")
    states = []
    for path in sockets:
        with grpc.insecure_channel(f"unix:{path}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = name
            try:
                response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                    request, timeout=10
                )
            except grpc.RpcError:
                states.append([])
                continue
            states.append([v.state for v in response.model_version_status])
    return states


def test_a_config_reload_through_the_shared_port_reaches_every_process(group):
    server, root = group
    config = text_format.Parse(
        f'model_config_list {{ config {{ name: "a" base_path: "{root / "a"}" model_platform: "tensorflow" }} '
        f'config {{ name: "b" base_path: "{root / "b"}" model_platform: "tensorflow" }} }}',
        model_server_config_pb2.ModelServerConfig(),
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=config), timeout=120
        )
    assert response.status.error_code == 0
    # The reload answered only once every process had loaded b.
    assert status_in_each_process(server, "b") == [[State.AVAILABLE], [State.AVAILABLE]]
