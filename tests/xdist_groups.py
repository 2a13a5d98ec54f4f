"""`make test` on pytest-xdist: each test file runs whole on one worker, and files that share an expensive session
fixture (the embedded stack, the trained models) run as one group, so the group builds it once, not once per worker.

pytest-xdist's own `--dist loadgroup` cannot do this with pytest 9.2: it appends the group to each item's node id,
which pytest 9.2 no longer lets a plugin change, so every test is scheduled alone (pytest-xdist#1386). Instead, with
`--dist loadfile`, each worker writes every file's group to a file at collection (every worker collects the same),
and the controller schedules xdist's file scheduler with the group in place of the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from functools import cached_property
from pathlib import Path

import pytest
from xdist.scheduler import LoadFileScheduling

WORKER_INPUT_KEY = "kiln_file_groups"
GROUPS_PATH = pytest.StashKey[str]()  # the controller's: where the workers write the groups


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


class GroupedFileScheduling(LoadFileScheduling):
    """xdist's file scheduler, with each file's group (tests/conftest.py names them) as its unit of work."""

    def __init__(self, config: pytest.Config, log=None) -> None:
        super().__init__(config, log)
        self.groups_path = Path(config.stash[GROUPS_PATH])

    @cached_property
    def groups(self) -> dict[str, str]:
        # Read once the workers have collected: xdist splits scopes only after every worker reported its collection.
        return json.loads(self.groups_path.read_text())

    def _split_scope(self, nodeid: str) -> str:
        file = file_of(nodeid)
        return self.groups.get(file, file)



def configure_controller(config: pytest.Config) -> None:
    """The controller (with -n): a temp folder for the workers' file of groups, removed at the end."""
    if config.getoption("dist", "no") == "loadfile" and not hasattr(config, "workerinput"):
        folder = tempfile.mkdtemp(prefix="kiln-test-groups-")
        config.stash[GROUPS_PATH] = str(Path(folder) / "groups.json")
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


def make_scheduler(config: pytest.Config, log) -> GroupedFileScheduling | None:
    return GroupedFileScheduling(config, log) if GROUPS_PATH in config.stash else None


def tell_worker(node) -> None:
    if GROUPS_PATH in node.config.stash:
        node.workerinput[WORKER_INPUT_KEY] = node.config.stash[GROUPS_PATH]


def record_groups(config: pytest.Config, groups: dict[str, str]) -> None:
    """A worker writes `{file: group}`; atomically, since every worker writes the same content."""
    path = getattr(config, "workerinput", {}).get(WORKER_INPUT_KEY)
    if path is None:
        return
    with tempfile.NamedTemporaryFile("w", dir=Path(path).parent, delete=False, suffix=".tmp") as out:
        json.dump(groups, out)
    os.replace(out.name, path)
