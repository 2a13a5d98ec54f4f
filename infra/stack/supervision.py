"""The embedded stack's process supervisor: supervisord (PyPI's `supervisor`) runs each service as its
own program, restarts one that dies, and answers over XML-RPC on a unix socket which state each
program is in, since when, and with which pid.

supervisord restarts a program that exits after it was up (`autorestart`); one that keeps dying
during start-up is retried with its growing backoff (1 s, 2 s, ...) `startretries` times, then
left FATAL, which `kiln status` shows. Restarts are counted by an event listener of supervisord's
own (`infra.stack.restart_listener`), since supervisord keeps no count.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import shlex
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

from common.processes import (
    become_subreaper,
    group_members,
    log_tail,
    recorded_groups,
    stop_process_group,
    stop_processes,
)

SUPERVISOR_DIR = "supervisor"
RESTARTS_FILE = "starts.json"
LISTENER = "kiln-restart-listener"
START_RETRIES = 5
UP_AFTER_SECONDS = 3  # a program that lives this long counts as started; before that its exit is a failed start


# No answer (socket gone, connection refused or dropped) or a refusal from supervisord.
RPC_ERRORS = (OSError, xmlrpc.client.Error, http.client.HTTPException)


class SupervisorError(RuntimeError):
    """supervisord cannot start, or does not answer; one line."""


@dataclass(frozen=True)
class Program:
    """One supervised service. `reap_leftovers`: before a restart, kill what the dead instance left
    running in its process group (a server's worker still holding the port); off for the scheduler,
    whose orphaned task processes finish their tasks and report them through the API."""

    name: str
    command: list[str]
    reap_leftovers: bool = True
    stop_seconds: int = 30


@dataclass(frozen=True)
class ProgramState:
    name: str
    state: str  # supervisord's: RUNNING, STARTING, BACKOFF, EXITED, FATAL, STOPPED, ...
    pid: int | None
    uptime_seconds: float | None
    restarts: int
    description: str


class Supervisor:
    def __init__(self, home: Path):
        self.home = home
        self.dir = home / SUPERVISOR_DIR

    @property
    def config_path(self) -> Path:
        return self.dir / "supervisord.conf"

    @property
    def socket_path(self) -> Path:
        path = self.dir / "supervisor.sock"
        if len(str(path)) < 100:
            return path
        # A unix socket's path has at most 107 bytes; a deep KILN_HOME gets one named after it in /tmp.
        return Path(tempfile.gettempdir()) / f"kiln-supervisor-{hashlib.sha256(bytes(path)).hexdigest()[:16]}.sock"

    @property
    def log_path(self) -> Path:
        return self.home / "logs" / "supervisord.log"

    def program_log(self, name: str) -> Path:
        return self.home / "logs" / f"{name}.log"

    # -- configuration -------------------------------------------------------------------------
    def write_config(self, programs: list[Program]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        sections = [
            ("unix_http_server", {"file": self.socket_path, "chmod": "0700"}),
            ("supervisord", {"logfile": self.log_path, "pidfile": self.dir / "supervisord.pid",
                             "childlogdir": self.dir, "nodaemon": "true", "silent": "true",
                             "identifier": "kiln"}),
            ("rpcinterface:supervisor",
             {"supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"}),
            ("supervisorctl", {"serverurl": f"unix://{self.socket_path}"}),
        ]
        for program in programs:
            if any("\n" in part for part in program.command):
                raise ValueError(f"program {program.name!r}: an argument spans more than one line, which "
                                 "supervisord's config cannot hold")
            wrapped = [sys.executable, "-m", "infra.stack.service_exec", "--group-file", str(self.dir / f"{program.name}.pgid"),
                       *(["--reap"] if program.reap_leftovers else []), "--", *program.command]
            sections.append((f"program:{program.name}", {
                "command": shlex.join(wrapped),
                "directory": self.home,
                "autostart": "true",
                "autorestart": "true",
                "startsecs": UP_AFTER_SECONDS,
                "startretries": START_RETRIES,
                "stopsignal": "TERM",
                "stopwaitsecs": program.stop_seconds,
                # Stop and kill the whole group: Airflow's task processes, mlflow's uvicorn worker.
                "stopasgroup": "true",
                "killasgroup": "true",
                "redirect_stderr": "true",
                "stdout_logfile": self.program_log(program.name),
                "stdout_logfile_maxbytes": "50MB",
                "stdout_logfile_backups": "2",
            }))
        sections.append((f"eventlistener:{LISTENER}", {
            "command": shlex.join([sys.executable, "-m", "infra.stack.restart_listener", str(self.dir / RESTARTS_FILE)]),
            "events": "PROCESS_STATE_RUNNING",
            "autorestart": "true",
            "stderr_logfile": self.program_log(LISTENER),
        }))
        text = "".join(f"[{name}]\n" + "".join(f"{key}={_escape(value)}\n" for key, value in values.items()) + "\n"
                       for name, values in sections)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, env: dict[str, str], timeout: float = 30) -> int:
        """Start supervisord in the foreground of its own session; return its pid once it answers."""
        for stale in [self.dir / RESTARTS_FILE, *self.dir.glob("*.pgid")]:  # a previous stack's
            stale.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(Path(sys.executable).parent / "supervisord"), "-c", str(self.config_path)],
                cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # Orphans of a killed service (a scheduler's task process, a training worker) become
                # supervisord's children instead of init's, so `stop` still finds them.
                start_new_session=True, preexec_fn=become_subreaper,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SupervisorError(f"supervisord exited with code {process.returncode}: "
                                      f"{' | '.join(log_tail(self.log_path, 3))}")
            if self.answers():
                return process.pid
            time.sleep(0.2)
        stop_process_group(process.pid, timeout=5)
        raise SupervisorError(f"supervisord did not answer on {self.socket_path} within {timeout:.0f}s")

    def stop(self, pid: int, timeout: float = 60) -> list[str]:
        """Stop every program (its whole group, SIGKILL after its stop_seconds), then supervisord, then
        what outlived its program; return the names of the latter."""
        import psutil

        with contextlib.suppress(*RPC_ERRORS):
            self._rpc().supervisor.stopAllProcesses(True)
        try:
            outlived = psutil.Process(pid).children(recursive=True)
        except psutil.Error:  # supervisord itself died: its programs still run, in their recorded groups
            outlived = []
        for group_file in self.dir.glob("*.pgid"):
            outlived += [process for pgid in recorded_groups(group_file) for process in group_members(pgid)]
        with contextlib.suppress(*RPC_ERRORS):
            self._rpc().supervisor.shutdown()
        stop_process_group(pid, timeout)
        outlived = [p for p in {p.pid: p for p in outlived}.values() if p.is_running()]
        names = []
        for process in outlived:
            with contextlib.suppress(psutil.Error):
                names.append(process.name())
        stop_processes(outlived, timeout=3)  # idle LocalExecutor workers ignore SIGTERM
        return names

    # -- state ---------------------------------------------------------------------------------
    def answers(self) -> bool:
        try:
            return self._rpc().supervisor.getState()["statename"] == "RUNNING"
        except RPC_ERRORS:
            return False

    def _rpc(self) -> xmlrpc.client.ServerProxy:
        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def states(self) -> dict[str, ProgramState]:
        try:
            infos = self._rpc().supervisor.getAllProcessInfo()
        except RPC_ERRORS as exc:
            raise SupervisorError(f"supervisord is not answering on {self.socket_path}: {exc}") from None
        starts = self.starts()
        result = {}
        for info in infos:
            if info["name"] == LISTENER:
                continue
            running = info["statename"] == "RUNNING"
            result[info["name"]] = ProgramState(
                name=info["name"], state=info["statename"], pid=info["pid"] or None,
                uptime_seconds=float(info["now"] - info["start"]) if running else None,
                restarts=max(0, starts.get(info["name"], 0) - 1), description=info["description"])
        return result

    def starts(self) -> dict[str, int]:
        """How often each program reached RUNNING since supervisord started (the listener's count)."""
        try:
            return json.loads((self.dir / RESTARTS_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {}


def _escape(value: object) -> str:
    # supervisord expands %(name)s in its values; a literal % must be doubled.
    return str(value).replace("%", "%%")
