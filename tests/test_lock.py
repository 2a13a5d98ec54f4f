"""requirements.lock agrees with pyproject.toml, and the running venv is exactly what the lock pins.

Each failure is one line naming what disagrees and what to run (README: Dependencies). No network: the lock's
recorded digest and pins are compared with pyproject.toml and with the installed distributions.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parent.parent


def _load_lockfile_tool():
    """tools/ is not a package kiln installs; load the script the Makefile runs, by its path."""
    spec = importlib.util.spec_from_file_location("kiln_tools_lockfile", ROOT / "tools" / "lockfile.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


lockfile = _load_lockfile_tool()


def fail(reasons: list[str]) -> None:
    if reasons:
        pytest.fail("; ".join(reasons), pytrace=False)


def test_the_lock_was_made_from_this_pyproject():
    reason = lockfile.staleness()
    if reason:
        pytest.fail(reason, pytrace=False)


def test_every_requirement_of_pyproject_is_met_by_a_locked_pin():
    """Catches a lock edited by hand, which the digest alone would not."""
    locked = {pin.name: pin for pin in lockfile.pins(lockfile.LOCK.read_text())}
    sources = lockfile.locked_requirements()
    reasons = []
    requires_python = SpecifierSet(sources.pop("requires-python")[0])
    if lockfile.TARGET_PYTHON not in requires_python:
        reasons.append(
            f"the lock is made for Python {lockfile.TARGET_PYTHON}, outside requires-python {requires_python}"
        )
    for source, requirements in sources.items():
        for text in requirements:
            requirement = Requirement(text)
            extra = {"extra": "dev"} if source == "dev" else {"extra": ""}
            if requirement.marker is not None and not requirement.marker.evaluate(extra):
                continue
            pin = locked.get(lockfile.normalized_name(requirement.name))
            if pin is None:
                reasons.append(f"{lockfile.LOCK.name} does not pin {requirement.name} ({source}: {text})")
            elif not requirement.specifier.contains(pin.version, prereleases=True):
                reasons.append(
                    f"{lockfile.LOCK.name} pins {pin.name} {pin.version}, outside {text} ({source})"
                )
            else:
                reasons.extend(_unmet_extras(requirement, locked))
    if reasons:
        reasons.append(lockfile.REMEDY)
    fail(reasons)


def _unmet_extras(requirement: Requirement, locked: dict) -> list[str]:
    """What `uvicorn[standard]` and the like add, read from the installed package's metadata."""
    if not requirement.extras:
        return []
    try:
        declared = metadata.requires(requirement.name) or []
    except metadata.PackageNotFoundError:
        extras = ", ".join(sorted(requirement.extras))
        return [f"{requirement.name} is not installed, so its extras ({extras}) cannot be checked"]
    reasons = []
    for text in declared:
        needed = Requirement(text)
        if needed.marker is None or "extra" not in str(needed.marker):
            continue  # a base requirement: pip check covers those
        if not any(needed.marker.evaluate({"extra": extra}) for extra in requirement.extras):
            continue  # another extra's, or not for this platform
        pin = locked.get(lockfile.normalized_name(needed.name))
        if pin is None or not needed.specifier.contains(pin.version, prereleases=True):
            got = "nothing" if pin is None else pin.version
            reasons.append(
                f"{requirement} needs {needed.name}{needed.specifier}; {lockfile.LOCK.name} pins {got}"
            )
    return reasons


def test_the_venv_has_exactly_the_locked_versions():
    import setuptools  # noqa: F401 - as an earlier test may have: its vendored metadata must not count

    installed = lockfile.installed_versions()
    reasons = []
    for pin in lockfile.pins(lockfile.LOCK.read_text()):
        if not lockfile.applies(pin):  # the marker is false here, so make did not install it
            continue
        version = installed.get(pin.name)
        if version != pin.version:
            reasons.append(f"{pin.name} {version or 'not'} installed, {pin.version} locked")
    extra = lockfile.extraneous(lockfile.LOCK.read_text())
    if extra:
        reasons.append(f"installed but not locked: {', '.join(extra)}")
    if reasons:
        reasons.append(f"make refreshes {sys.prefix} from {lockfile.LOCK.name} when the lock is newer")
    fail(reasons)


def test_pip_check_is_clean():
    result = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        fail([f"pip check: {line}" for line in result.stdout.splitlines() if line.strip()])


# tools/lockfile.py itself, on copies of pyproject.toml and the lock.


@pytest.fixture
def project(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(lockfile.PYPROJECT.read_text())
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# header\n{lockfile.DIGEST_LINE}{lockfile.requirements_digest(pyproject)}\npip==26.3\n")
    return pyproject, lock


def test_comments_order_and_spacing_in_pyproject_do_not_make_the_lock_stale(project):
    pyproject, lock = project
    text = pyproject.read_text()
    text = text.replace('"pyyaml>=6",\n  "typer>=0.12",', '"typer >= 0.12",  # reordered\n  "pyyaml>=6",')
    assert '"typer >= 0.12"' in text
    pyproject.write_text(text.replace("[project]", "# a comment\n[project]"))
    assert lockfile.staleness(pyproject, lock) is None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"uvicorn[standard]>=0.30"', '"uvicorn[standard]>=0.30,<0.56"'),  # a project dependency
        ('"ruff>=0.6"', '"ruff>=0.7"'),  # the dev extra
        ('requires = ["setuptools>=69"]', 'requires = ["setuptools>=70"]'),  # the build backend
        ('requires-python = ">=3.11,<3.12"', 'requires-python = ">=3.11,<3.13"'),
    ],
)
def test_a_changed_requirement_makes_the_lock_stale_in_one_line(project, old, new):
    pyproject, lock = project
    text = pyproject.read_text()
    assert old in text
    pyproject.write_text(text.replace(old, new))
    reason = lockfile.staleness(pyproject, lock)
    assert reason == (
        "requirements.lock is out of date: the requirements in pyproject.toml changed since it was made; "
        "run `make lock`"
    )


def test_a_lock_without_its_digest_is_stale(project):
    pyproject, lock = project
    lock.write_text("pip==26.3\n")
    assert lockfile.staleness(pyproject, lock) == (
        "requirements.lock does not say which pyproject.toml it was made from: run `make lock`"
    )


def test_pins_read_markers_and_keep_each_entry_whole():
    text = (
        "# This file was autogenerated by uv\n"
        "async-timeout==5.0.1 ; python_full_version < '3.11.3' \\\n"
        "    --hash=sha256:aaa \\\n"
        "    --hash=sha256:bbb\n"
        "    # via redis\n"
        "PyYAML==6.0.4 \\\n"
        "    --hash=sha256:ccc\n"
    )
    timeout, yaml = lockfile.pins(text)
    assert (timeout.name, timeout.version, timeout.marker) == (
        "async-timeout",
        "5.0.1",
        "python_full_version < '3.11.3'",
    )
    assert timeout.entry == (
        "async-timeout==5.0.1 ; python_full_version < '3.11.3' \\\n"
        "    --hash=sha256:aaa \\\n"
        "    --hash=sha256:bbb\n"
    )
    assert (yaml.name, yaml.version, yaml.marker) == ("pyyaml", "6.0.4", None)
    assert lockfile.applies(yaml)
    windows_only = lockfile.Pin(name="pywin32", version="311", marker="sys_platform == 'win32'", entry="")
    assert not lockfile.applies(windows_only)
