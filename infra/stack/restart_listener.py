"""supervisord event listener: counts how often each program reached RUNNING, in a JSON file that
`kiln status` reads (restarts = starts - 1). supervisord starts it as `[eventlistener:...]` and
speaks its protocol over stdin/stdout, so nothing else may be printed on stdout."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from supervisor import childutils


def count_start(path: Path, program: str) -> None:
    try:
        counts = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        counts = {}
    counts[program] = counts.get(program, 0) + 1
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(counts))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    path = Path((argv or sys.argv[1:])[0])
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers["eventname"] == "PROCESS_STATE_RUNNING":
            fields, _ = childutils.eventdata(payload + "\n")
            count_start(path, fields["processname"])
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
