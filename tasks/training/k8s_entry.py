"""Entry point of a worker pod of an Indexed Job: TF_CONFIG from the pod's index, then the worker.

`python -m tasks.training.k8s_entry --spec URI --job J --workers N --service S --port 2222`

Without the Kubeflow training operator nobody writes TF_CONFIG, so this does it from what the Job
gives every pod: `JOB_COMPLETION_INDEX` (0..N-1) and a stable hostname `<job>-<index>`, which the
headless Service `S` (the pods' `subdomain`) makes resolvable as `<job>-<index>.<S>` inside the
namespace. Worker 0 is the chief. The process then becomes `python -m tasks.training.worker --spec
URI` (exec: same pid, so the pod's exit code and signals are the worker's own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from common import LEGACY_KERAS_ENV

INDEX_ENV = "JOB_COMPLETION_INDEX"


def tf_config(job: str, service: str, workers: int, port: int, index: int) -> dict[str, Any]:
    """MultiWorkerMirroredStrategy's cluster: every worker by its pod's DNS name, and this one's index."""
    if not 0 <= index < workers:
        raise ValueError(f"{INDEX_ENV}={index} is outside 0..{workers - 1}")
    return {"cluster": {"worker": [f"{job}-{i}.{service}:{port}" for i in range(workers)]},
            "task": {"type": "worker", "index": index}}


def worker_command(spec: str) -> list[str]:
    return [sys.executable, "-m", "tasks.training.worker", "--spec", spec]


def main(argv: list[str] | None = None,
         execve: Callable[[str, list[str], dict[str, str]], Any] = os.execve) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="the worker spec's URI (object storage)")
    parser.add_argument("--job", required=True, help="the Job's name: pods are <job>-<index>")
    parser.add_argument("--workers", type=int, required=True, help="the Job's completions (worker count)")
    parser.add_argument("--service", required=True, help="the headless Service the pods' subdomain names")
    parser.add_argument("--port", type=int, default=2222, help="the workers' gRPC port")
    args = parser.parse_args(argv)
    raw = os.environ.get(INDEX_ENV)
    try:
        if raw is None:
            raise ValueError(f"{INDEX_ENV} is not set: this runs in a pod of an Indexed Job")
        config = tf_config(args.job, args.service, args.workers, args.port, int(raw))
    except ValueError as exc:
        print(f"k8s_entry: {exc}", file=sys.stderr, flush=True)
        return 2
    env = {**os.environ, "TF_CONFIG": json.dumps(config), **LEGACY_KERAS_ENV}
    command = worker_command(args.spec)
    execve(command[0], command, env)
    return 0  # only reached with a stand-in execve (tests)


if __name__ == "__main__":
    sys.exit(main())
