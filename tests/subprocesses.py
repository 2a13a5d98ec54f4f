"""Calls in Python processes of their own, all at once (two tune instances, two identical runs): plain subprocesses
with a deadline, so a child that dies or hangs fails the test instead of hanging a multiprocessing pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
_CALL = ("import importlib, json, sys; module, _, name = sys.argv[1].partition(':'); "
         "print('RESULT ' + json.dumps(getattr(importlib.import_module(module), name)(*json.loads(sys.argv[2]))))")


def start(function: str, *args: Any) -> subprocess.Popen[str]:
    """`module:function(*args)` (JSON arguments) in a new Python process, started now."""
    return subprocess.Popen([sys.executable, "-c", _CALL, function, json.dumps(args)], cwd=REPO, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(process: subprocess.Popen[str], timeout: float = 300) -> Any:
    """What the call returned; its stderr's tail when it failed."""
    out, err = process.communicate(timeout=timeout)
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, err[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def call_at_once(function: str, argument_lists: list[list[Any]], timeout: float = 300) -> list[Any]:
    processes = [start(function, *args) for args in argument_lists]
    try:
        return [result(process, timeout) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
