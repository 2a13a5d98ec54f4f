"""--kiln_server_processes=N (kiln-only, default 1): N server processes behind the same gRPC and REST ports.

One Python process serves with one GIL, so its JSON, protobuf and HTTP work uses one core whatever the model
does. With N > 1 the command becomes a supervisor (it imports no TensorFlow) that starts N copies of itself,
each with the same flags and config, each loading the models and binding the ports with SO_REUSEPORT, so the
kernel spreads connections over them. The first process starts alone, so a bad config or a model that fails
to load ends the server with its one error line and exit code, as with one process; the others start once it
serves. If any process ends, the supervisor stops the others and exits with its code. SIGTERM/SIGINT are
passed on.

What stays coherent: every process reads the same config file and polls the same folders, so statuses agree;
a HandleReloadConfigRequest reaches one process through the shared port, which applies it and forwards it to
its siblings over their private UNIX sockets (tagged so that it is not forwarded again) before answering.
What is per process: Prometheus metrics (the page shows the process that answered) and batching queues.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

PROCESS_INDEX_ENV = "KILN_MODEL_SERVER_PROCESS_INDEX"
SIBLING_SOCKETS_ENV = "KILN_MODEL_SERVER_SIBLING_SOCKETS"
FORWARDED_KEY = "kiln-forwarded-reload"
FORWARD_TIMEOUT_SECONDS = 600  # a forwarded reload waits for its models as long as the original does
STOP_GRACE_SECONDS = 15


class SiblingProcesses:
    """This process's place in the group: its index and every member's private gRPC socket."""

    def __init__(self, index: int, sockets: list[str]):
        self.index, self.sockets = index, sockets

    @classmethod
    def from_environment(cls) -> SiblingProcesses | None:
        sockets = os.environ.get(SIBLING_SOCKETS_ENV)
        if not sockets:
            return None
        return cls(int(os.environ[PROCESS_INDEX_ENV]), sockets.split(","))

    @property
    def own_socket(self) -> str:
        return self.sockets[self.index]

    @property
    def is_first(self) -> bool:
        return self.index == 0

    def forward_reload(self, request) -> None:
        """Send a ReloadConfigRequest to every other process; raise the first failure as a ServingError."""
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc

        from serving.codec import ServingError

        for index, path in enumerate(self.sockets):
            if index == self.index:
                continue
            with grpc.insecure_channel(f"unix:{path}") as channel:
                stub = model_service_pb2_grpc.ModelServiceStub(channel)
                try:
                    # wait_for_ready: a sibling still loading its first models has not bound its socket yet.
                    response = stub.HandleReloadConfigRequest(
                        request,
                        metadata=[(FORWARDED_KEY, "1")],
                        wait_for_ready=True,
                        timeout=FORWARD_TIMEOUT_SECONDS,
                    )
                except grpc.RpcError as error:
                    raise ServingError(error.code().name, error.details() or "") from None
            if response.status.error_code:
                raise ServingError("UNKNOWN", response.status.error_message)


def is_forwarded(metadata) -> bool:
    return any(key == FORWARDED_KEY for key, _ in metadata or ())


def supervise(argv: list[str], processes: int) -> int:
    """Run `processes` copies of the server with `argv`; return the exit code for the supervisor."""
    folder = tempfile.mkdtemp(prefix="kiln-model-server-")
    sockets = [os.path.join(folder, f"process-{index}.sock") for index in range(processes)]
    children: list[subprocess.Popen] = []
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    try:
        for index in range(processes):
            children.append(_start_child(argv, index, sockets))
            if index == 0 and not _wait_until_serving(children[0], sockets[0], lambda: stopping):
                return _finish(children, stopping)
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
        return _finish(children, stopping)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _start_child(argv: list[str], index: int, sockets: list[str]) -> subprocess.Popen:
    env = dict(os.environ, **{PROCESS_INDEX_ENV: str(index), SIBLING_SOCKETS_ENV: ",".join(sockets)})
    # The flag given last wins: each child is a one-process server.
    command = [sys.executable, "-m", "serving.model_server.main", *argv, "--kiln_server_processes=1"]
    return subprocess.Popen(command, env=env)


def _wait_until_serving(child: subprocess.Popen, socket_path: str, stopping) -> bool:
    """The first process binds its private socket once its models are loaded, just before its ports."""
    while child.poll() is None and not stopping():
        if os.path.exists(socket_path):
            return True
        time.sleep(0.1)
    return False


def _finish(children: list[subprocess.Popen], stopping: bool) -> int:
    """Stop every child still running; the code is the first one to have ended on its own, else 0."""
    ended = [child.returncode for child in children if child.poll() is not None]
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if stopping or not ended:
        return 0
    return ended[0] if ended[0] >= 0 else 1
