"""The child side of tests/warm_processes.py. Run in a process forked from the warm forkserver, with ENTRY,
ARGS, ENV, CWD and LOG_PATH given as globals (runpy.run_path's init_globals), it becomes what `python -m` of
the entry's module would be as subprocess starts it: a session of its own, stdin closed, stdout and stderr
to the log, and the entry's return value as exit code."""

import importlib
import os
import sys

os.setsid()
log = os.open(LOG_PATH, os.O_WRONLY | os.O_APPEND)  # noqa: F821 (the globals are the parent's)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.dup2(log, 1)
os.dup2(log, 2)
os.close(log)
os.close(null)
os.chdir(CWD)  # noqa: F821
os.environ.clear()
os.environ.update(ENV)  # noqa: F821
module, function = ENTRY.split(":")  # noqa: F821
sys.argv = [module, *ARGS]  # noqa: F821
sys.exit(getattr(importlib.import_module(module), function)(ARGS))  # noqa: F821
