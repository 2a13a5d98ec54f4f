"""The embedded stack the end-to-end tests share: `kiln up` on free ports in a temp KILN_HOME, once (starting one
costs half a minute and more), `kiln down` after the last of them, which must leave nothing. The test files that use
it run as one group on one worker (tests/conftest.py), and ahead of the others: the longest group starts first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

KILN = str(Path(sys.executable).parent / "kiln")


class Kiln:
    def __init__(self, home: Path, env: dict[str, str], cwd: Path):
        self.home, self.env, self.cwd = home, env, cwd

    def __call__(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([KILN, *args], env=self.env, cwd=self.cwd, capture_output=True, text=True,
                              timeout=timeout)

    @contextmanager
    def running(self, *args: str) -> Iterator[subprocess.Popen]:
        """`kiln <args>` beside the test (output captured as text); killed if the test leaves the block before it
        ends: a run following a DAG that waits for an answer would keep the test, and the session, waiting."""
        with subprocess.Popen([KILN, *args], env=self.env, cwd=self.cwd, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) as process:
            try:
                yield process
            finally:
                if process.poll() is None:
                    process.kill()

    def run_json(self, *args: str) -> dict:
        result = self("run", "--json", *args)
        assert result.returncode == 0, result.stderr[-4000:]
        return json.loads(result.stdout)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.env['KILN_SERVING_REST_PORT']}"


@pytest.fixture(scope="package")
def kiln(tmp_path_factory, port_factory_session):
    root = tmp_path_factory.mktemp("e2e")
    home = root / "kiln"
    env = {**os.environ, "KILN_HOME": str(home), "COLUMNS": "200"}
    for name in ("AIRFLOW", "MLFLOW", "SERVING_REST", "SERVING_GRPC", "AIRFLOW_WORKER_LOGS", "AIRFLOW_TRIGGER_LOGS"):
        env[f"KILN_{name}_PORT"] = str(port_factory_session())
    # tasks.failpoints: a fault test arms one by creating a file of its name in this folder.
    env["KILN_FAILPOINTS"] = str(root / "failpoints")
    (root / "failpoints").mkdir()
    cli = Kiln(home, env, root)
    up = cli("up", timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        yield cli
    finally:
        stack = [*supervised_processes(home)]
        down = cli("down", timeout=180)
        assert down.returncode == 0, down.stderr
        assert not (home / "stack.json").exists()
        left = [p for p in stack if _alive(p)]
        assert not left, f"kiln down left processes behind: {left}"


def supervised_processes(home: Path) -> list[psutil.Process]:
    """supervisord and everything under it (orphans included: it is their subreaper)."""
    try:
        supervisor = psutil.Process(json.loads((home / "stack.json").read_text())["supervisor_pid"])
        return [supervisor, *supervisor.children(recursive=True)]
    except (FileNotFoundError, psutil.Error):
        return []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's screenshots (recorded as `("screenshot", path)` user properties, which also go
    to a JUnit XML report) are named in its failure report."""
    outcome = yield
    report = outcome.get_result()
    shots = [value for name, value in item.user_properties if name == "screenshot"]
    if report.failed and shots:
        report.sections.append(("screenshots", "\n".join(shots)))


@pytest.fixture(scope="session")
def port_factory_session():
    from tests.servers import free_port

    return free_port




def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
