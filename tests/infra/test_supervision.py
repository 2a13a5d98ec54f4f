"""The embedded stack's supervisor with real processes: supervisord restarts a program killed with
SIGKILL and counts it, a restart first kills what the dead instance left holding its port, and
`stop` leaves nothing behind, not even orphans or the programs of a supervisord that died itself."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import psutil
import pytest

from common.processes import free_port
from infra.stack.supervision import Program, Supervisor
from tests.servers import wait_for as wait_until

pytestmark = pytest.mark.slow

# A server whose listening socket lives in a child, as mlflow's uvicorn worker does: killing the
# parent alone leaves the port taken.
SERVER_IN_A_CHILD = """
import os, socket, sys, time
if os.fork() == 0:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
    while True:
        conn, _ = s.accept(); conn.sendall(str(os.getpid()).encode()); conn.close()
while True:
    time.sleep(1)
"""
# A worker in its own session whose parent dies, as a training worker of a killed task process.
ORPHAN_IN_ITS_OWN_SESSION = """
import os, subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
time.sleep(600)
"""


def python(code: str, *args: str) -> list[str]:
    """A command running `code` from a file: supervisord's config has no multi-line values."""
    path = Path(os.environ["PYTEST_TMP"]) / f"program-{abs(hash(code))}.py"
    path.write_text(code)
    return [sys.executable, str(path), *args]


def wait_for(condition, timeout: float, what: str):
    return wait_until(condition, timeout, interval=0.1, message=what)


def answer(port: int) -> int | None:
    """The pid of the process that holds the port, as it says itself."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            return int(conn.recv(32))
    except (OSError, ValueError):
        return None


@pytest.fixture
def supervise(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTEST_TMP", str(tmp_path))
    started = []

    def start(*programs: Program) -> tuple[Supervisor, int]:
        supervisor = Supervisor(tmp_path / "home")
        supervisor.write_config(list(programs))
        pid = supervisor.start(dict(os.environ))
        started.append((supervisor, pid))
        wait_for(lambda: all(s.state == "RUNNING" for s in supervisor.states().values()), 30, "programs running")
        return supervisor, pid

    yield start
    for supervisor, pid in started:
        supervisor.stop(pid, timeout=10)


def test_a_killed_program_is_restarted_counted_and_its_port_freed_first(supervise) -> None:
    port = free_port()
    supervisor, _ = supervise(Program("server", python(SERVER_IN_A_CHILD, str(port))))
    first = supervisor.states()["server"]
    assert first.restarts == 0 and first.uptime_seconds is not None
    old_child = wait_for(lambda: answer(port), 10, "the server answering")
    os.kill(first.pid, signal.SIGKILL)

    def restarted():
        state = supervisor.states()["server"]
        return state if state.state == "RUNNING" and state.pid != first.pid else None

    state = wait_for(restarted, 30, "a restarted server")
    new_child = wait_for(lambda: (pid := answer(port)) != old_child and pid, 15, "the new server holding the port")
    assert not psutil.pid_exists(old_child) or psutil.Process(old_child).status() == psutil.STATUS_ZOMBIE
    assert new_child != old_child
    wait_for(lambda: supervisor.states()["server"].restarts == 1, 10, "the restart counted")
    assert "killed 1 leftover process" in supervisor.program_log("server").read_text()
    assert state.pid != first.pid


def test_stop_leaves_no_process_behind_not_even_an_orphan(supervise, tmp_path) -> None:
    supervisor, pid = supervise(Program("parent", python(ORPHAN_IN_ITS_OWN_SESSION), reap_leftovers=False))
    parent = psutil.Process(supervisor.states()["parent"].pid)
    orphan = wait_for(lambda: parent.children(), 10, "the worker started")[0]
    parent.kill()
    # The orphan is reparented to supervisord (a child subreaper), not to init, so stop still finds it.
    wait_for(lambda: orphan.ppid() == pid, 10, "the orphan reparented to supervisord")
    wait_for(lambda: supervisor.states()["parent"].pid not in (None, parent.pid), 30, "the parent restarted")
    everything = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    assert supervisor.stop(pid, timeout=10)  # names what outlived its program
    assert not [p for p in everything if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_stop_after_supervisord_itself_died_stops_its_programs(supervise) -> None:
    port = free_port()
    supervisor, pid = supervise(Program("server", python(SERVER_IN_A_CHILD, str(port))))
    server = psutil.Process(supervisor.states()["server"].pid)
    child = psutil.Process(wait_for(lambda: answer(port), 10, "the server answering"))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not supervisor.answers(), 10, "supervisord gone")
    assert server.is_running(), "a dead supervisord leaves its programs running"
    supervisor.stop(pid, timeout=10)
    for process in (server, child):
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE


def test_a_value_spanning_lines_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(ValueError, match="program 'bad'.*more than one line"):
        Supervisor(tmp_path).write_config([Program("bad", ["python", "-c", "import os\nprint(1)"])])


def test_a_long_home_gets_a_short_socket_path(tmp_path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    socket_path = Supervisor(deep).socket_path
    assert len(str(socket_path)) < 100 and socket_path != Supervisor(tmp_path).socket_path
    assert Path(Supervisor(tmp_path).socket_path).parent == tmp_path / "supervisor"
