"""`python -m infra.stack.service_exec --group-file F [--reap] -- COMMAND...`: how supervisord starts a service.

supervisord makes each program the leader of its own process group and restarts it when it dies,
but a service killed with SIGKILL leaves its children behind: mlflow's uvicorn worker, still
holding the port, would make every restart fail. With `--reap`, this first kills what is left of
the groups recorded in F by earlier instances; then it records its own group there and execs the
service, so the service keeps this pid and supervisord's signals reach it directly. `kiln down`
stops what is left of every group recorded, even when supervisord itself is gone.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import psutil

from common.processes import group_members, recorded_groups


def reap(groups: list[int], timeout: float = 10) -> int:
    """Kill what earlier instances left in their groups; return how many processes that was."""
    stale = [process for pgid in groups for process in group_members(pgid)]
    for process in stale:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    psutil.wait_procs(stale, timeout=timeout)
    return len(stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group-file", type=Path, required=True)
    parser.add_argument("--reap", action="store_true", help="kill the previous instance's leftover processes")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after --")
    groups = recorded_groups(args.group_file)
    if args.reap:
        reaped = reap(groups)
        if reaped:
            print(f"kiln: killed {reaped} leftover process(es) of the previous {command[0]} before restarting it",
                  file=sys.stderr, flush=True)
        groups = []
    # Without --reap the earlier groups stay listed: `kiln down` stops what is left of them.
    tmp = args.group_file.with_name(f".{args.group_file.name}.tmp")
    tmp.write_text("".join(f"{pgid}\n" for pgid in [*groups, os.getpgrp()]))
    os.replace(tmp, args.group_file)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"kiln: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
    return 127


if __name__ == "__main__":
    sys.exit(main())
