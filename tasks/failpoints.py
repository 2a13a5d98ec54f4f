"""Fault injection for kiln's fault tests, in the manner of etcd's failpoints: a step marks the point
where dying would hurt most with `failpoint("register.after_version")`. When $KILN_FAILPOINTS names a
folder holding a file of that name, the file is removed (the fault fires once) and the process kills
itself with SIGKILL, as the OOM killer would. With the variable unset, as outside the fault tests,
a failpoint does nothing."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger(__name__)


def failpoint(name: str) -> None:
    folder = os.environ.get("KILN_FAILPOINTS")
    if not folder:
        return
    armed = Path(folder) / name
    try:
        armed.unlink()
    except FileNotFoundError:
        return
    log.warning("failpoint %s: killing this process (pid %d) with SIGKILL", name, os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)
