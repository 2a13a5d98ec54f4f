"""requirements.lock: made from pyproject.toml by uv (`make lock`), checked against it before every install.

The lock pins, with hashes, everything `make demo` and `make test` install for CPython 3.11 on Linux
x86_64: the project's dependencies, its dev extra, the build backend (kiln is installed editable without
build isolation, so setuptools comes from the lock too) and pip itself. Its header records a digest of those
requirement lists as pyproject.toml states them. `check` compares that digest with pyproject.toml as it is
now, using the standard library only, so `make` runs it with the bare interpreter before .venv exists.

    python tools/lockfile.py check               # exit 1, in one line, if the requirements changed
    python tools/lockfile.py compile --uv PATH [--upgrade]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
# .venv keeps a pip for people's own use; `uv pip sync` (see the Makefile) installs the locked one in place of
# the venv's bundled copy, which would otherwise be a different release on every machine.
TOOLING = ("pip",)
# The lock is resolved for this target whatever machine runs `make lock`. manylinux_2_28 (glibc 2.28) is a
# floor most Linux x86_64 machines meet; the hashes cover every file of each pinned version, so pip still
# picks the best wheel for the machine it runs on.
TARGET_PYTHON = "3.11"
TARGET_PLATFORM = "x86_64-manylinux_2_28"
DIGEST_LINE = "# pyproject.toml requirements sha256: "
REMEDY = "run `make lock`"
# The project itself, installed editable on top of the lock.
PROJECT_NAME = "kiln"


def normalized_name(name: str) -> str:
    """PEP 503's normal form, as pip and importlib.metadata compare names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_requirements(pyproject: Path = PYPROJECT) -> dict[str, list[str]]:
    """Every requirement list the lock is made from, by where it comes from: pyproject.toml's, and pip."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    return {
        "requires-python": [project["requires-python"]],
        "dependencies": list(project["dependencies"]),
        "dev": list(project["optional-dependencies"]["dev"]),
        "build-system": list(data["build-system"]["requires"]),
        "tooling": list(TOOLING),
    }


def requirements_digest(pyproject: Path = PYPROJECT) -> str:
    """sha256 of the requirement lists, blind to order, whitespace and comments: only a change to what is
    required (or to the Python version allowed) changes it."""
    normalized = {
        source: sorted("".join(requirement.split()) for requirement in requirements)
        for source, requirements in locked_requirements(pyproject).items()
    }
    return hashlib.sha256(json.dumps(normalized, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock_text: str) -> str | None:
    for line in lock_text.splitlines():
        if line.startswith(DIGEST_LINE):
            return line.removeprefix(DIGEST_LINE).strip()
    return None


def staleness(pyproject: Path = PYPROJECT, lock: Path = LOCK) -> str | None:
    """Why the lock does not match pyproject.toml, in one line; None when it does."""
    if not lock.exists():
        return f"{lock.name} is missing: {REMEDY}"
    recorded = recorded_digest(lock.read_text())
    if recorded is None:
        return f"{lock.name} does not say which {pyproject.name} it was made from: {REMEDY}"
    if recorded != requirements_digest(pyproject):
        return (
            f"{lock.name} is out of date: the requirements in {pyproject.name} changed since it was made; "
            f"{REMEDY}"
        )
    return None


@dataclass(frozen=True)
class Pin:
    name: str  # normalized
    version: str
    marker: str | None  # e.g. python_full_version < '3.11.3'; pip skips the pin where it is false
    entry: str  # the requirement as the lock writes it, hashes included


_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$"
)


def pins(lock_text: str) -> list[Pin]:
    """The lock's pins in order. An entry is a `name==version [; marker]` line and its `--hash` continuation
    lines; uv's `# via` annotations and the header are comments."""
    found: list[Pin] = []
    lines = lock_text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line or line.lstrip().startswith("#") or line.startswith(" "):
            continue
        match = _PIN.match(line)
        if match is None:
            raise ValueError(f"requirements.lock: not a pinned requirement: {line!r}")
        entry = [line]
        while entry[-1].rstrip().endswith("\\") and index < len(lines):
            entry.append(lines[index])
            index += 1
        found.append(
            Pin(
                name=normalized_name(match["name"]),
                version=match["version"],
                marker=match["marker"],
                entry="\n".join(entry).rstrip().rstrip("\\").rstrip() + "\n",
            )
        )
    return found


def compile_lock(uv: str, upgrade: bool) -> int:
    """Resolve pyproject.toml (with the dev extra) plus the build backend and pip, then record the digest.

    uv keeps the versions the existing lock pins wherever pyproject.toml still allows them, so a refresh moves
    only what a changed requirement forces; `upgrade` lets every pin move to the newest allowed release."""
    extra_requirements = locked_requirements()
    command = [
        uv, "pip", "compile", PYPROJECT.name, "-", "--extra", "dev",
        "--python-version", TARGET_PYTHON, "--python-platform", TARGET_PLATFORM,
        "--generate-hashes", "--no-strip-markers", "--custom-compile-command", "make lock",
        "--output-file", LOCK.name, "--quiet",
    ]  # fmt: skip
    if upgrade:
        command.append("--upgrade")
    # From stdin, so the lock's `# via` notes name no temporary file.
    stdin = "\n".join(extra_requirements["build-system"] + extra_requirements["tooling"]) + "\n"
    if subprocess.run(command, input=stdin, text=True, cwd=ROOT).returncode != 0:
        print(f"uv could not make the lock (its reason is above); {LOCK.name} is unchanged", file=sys.stderr)
        return 1
    lines = LOCK.read_text().splitlines(keepends=True)
    first_pin = next(index for index, line in enumerate(lines) if not line.startswith(("#", " ", "\n")))
    record = [
        f"{DIGEST_LINE}{requirements_digest()}\n",
        "# (tools/lockfile.py check compares it with pyproject.toml before every install)\n",
    ]
    temporary = LOCK.with_suffix(".lock.tmp")
    temporary.write_text("".join(lines[:first_pin] + record + lines[first_pin:]))
    os.replace(temporary, LOCK)
    return 0


def extraneous(lock_text: str) -> list[str]:
    """Distributions installed in this interpreter's environment that the lock does not pin (or pins behind a
    marker that is false here), the project itself aside: what `uv pip sync` removes from a refreshed .venv."""
    locked = {pin.name for pin in pins(lock_text) if applies(pin)}
    return sorted(set(installed_versions()) - locked - {PROJECT_NAME})


def installed_versions() -> dict[str, str]:
    """{normalized name: version} of what is installed in this environment's site-packages. Not whatever
    `sys.path` holds: an imported setuptools puts its vendored packages' metadata on it (setuptools/_vendor)."""
    import sysconfig
    from importlib import metadata

    folders = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    return {normalized_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions(path=folders)}


def applies(pin: Pin) -> bool:
    """Whether the installer installs this pin here: it has no marker, or its marker holds for this interpreter."""
    if pin.marker is None:
        return True
    # Only code run by .venv's python gets here (the tests), and the lock pins packaging.
    from packaging.markers import Marker

    return Marker(pin.marker).evaluate()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="exit 1 with one line when the lock does not match pyproject.toml")
    compile_parser = commands.add_parser("compile", help="remake the lock from pyproject.toml with uv")
    compile_parser.add_argument("--uv", required=True, help="the uv executable")
    compile_parser.add_argument("--upgrade", action="store_true", help="move every pin to its newest release")
    args = parser.parse_args(argv)

    if args.command == "check":
        reason = staleness()
        if reason:
            print(reason, file=sys.stderr)
            return 1
        return 0
    if args.command == "compile":
        return compile_lock(args.uv, args.upgrade)
    return 2


if __name__ == "__main__":
    sys.exit(main())
