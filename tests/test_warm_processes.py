"""tests/warm_processes.py: a server forked warm behaves as the command started by subprocess would."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.servers import SERVER_BIN, free_port, wait_for
from tests.warm_processes import launch_model_server


@pytest.mark.parametrize("args", [
    ["--version"],
    ["--port=0", "--model_config_file=no-such.config"],
    ["--port=0", "--no_such_flag=1"],
    ["--port=0"],
], ids=["version", "missing-config", "unknown-flag", "no-model"])
def test_a_warm_server_exits_and_writes_as_the_command_does(tmp_path, args) -> None:
    env = dict(os.environ)
    command = subprocess.run([SERVER_BIN, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)

    log = tmp_path / "warm.log"
    warm = launch_model_server([SERVER_BIN, *args], env, log)
    code = warm.wait(timeout=60)

    assert code == command.returncode
    assert log.read_text().splitlines()[-1:] == (command.stdout + command.stderr).splitlines()[-1:]


def test_a_warm_server_runs_in_its_own_session_from_the_callers_working_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.config").write_text("model_config_list {}\n")
    log = tmp_path / "warm.log"
    # A relative config path resolves against the caller's working directory, as for a command.
    warm = launch_model_server([SERVER_BIN, f"--port={free_port()}", f"--rest_api_port={free_port()}",
                                "--model_config_file=models.config"], None, log)
    try:
        wait_for(lambda: "Exporting HTTP/REST API" in log.read_text() or warm.poll() is not None, timeout=60)
        assert warm.poll() is None, log.read_text()
        assert os.getsid(warm.pid) == warm.pid != os.getsid(0)
    finally:
        warm.kill()
    assert warm.wait(timeout=30) == -signal.SIGKILL == warm.returncode
