"""Which pipelines exist: the YAMLs shipped in `pipelines/`, plus those `kiln run` was given from
anywhere else (recorded as small pointer files under `$KILN_HOME/pipelines/`). One DAG each."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import yaml

from infra import REPO_ROOT
from tasks.config import ConfigError, PipelineConfig, load_config
from tasks.errors import BadInputError

log = logging.getLogger(__name__)

SHIPPED = REPO_ROOT / "pipelines"
POINTERS = "pipelines"
CONFIG_MARK = "kiln-config:"  # the DAG doc line that says which YAML version Airflow parsed


def config_fingerprint(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _name_of(path: Path) -> str | None:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    name = raw.get("pipeline") if isinstance(raw, dict) else None
    return name if isinstance(name, str) else None


def shipped() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(SHIPPED.glob("*.yaml")):
        name = _name_of(path)
        if name is None:
            log.warning("%s has no pipeline name; skipped", path)
        elif name in found:
            log.warning("%s: pipeline %r is already defined by %s; skipped", path, name, found[name])
        else:
            found[name] = path.resolve()
    return found


def registered(home: Path | None) -> dict[str, Path]:
    """Pipelines recorded by `kiln run` under `home` (the embedded stack's KILN_HOME)."""
    if home is None or not (home / POINTERS).is_dir():
        return {}
    found = {}
    for pointer in sorted((home / POINTERS).glob("*.json")):
        try:
            found[pointer.stem] = Path(json.loads(pointer.read_text())["config_path"])
        except (OSError, ValueError, KeyError):
            log.warning("unreadable pipeline pointer %s; skipped", pointer)
    return found


def discover(home: Path | None) -> dict[str, Path]:
    """Every pipeline name -> its YAML; a shipped pipeline wins over a registered one of the same name."""
    return {**registered(home), **shipped()}


def load_pipelines(paths: dict[str, Path]) -> list[tuple[Path, PipelineConfig]]:
    """(path, config) of every pipeline that loads, each YAML read once for all the DAGs a DAG file builds
    from it; a broken YAML is logged and skipped, so it cannot take the other pipelines down (`kiln run`
    reports its error in one line)."""
    loaded = []
    for name, path in paths.items():
        try:
            loaded.append((path, load_config(path, expand_env=False)))
        except (BadInputError, OSError) as exc:
            log.error("pipeline %s (%s) skipped: %s", name, path, exc)
    return loaded


def register(home: Path, name: str, config_path: Path) -> bool:
    """Record `config_path` as pipeline `name` for the stack at `home`; True when something changed."""
    config_path = config_path.resolve()
    shipped_path = shipped().get(name)
    if shipped_path is not None:
        if shipped_path != config_path:
            raise ConfigError(f"{config_path}: pipeline name {name!r} is taken by {shipped_path}; rename it")
        return False
    pointer = home / POINTERS / f"{name}.json"
    if pointer.exists() and registered(home).get(name) == config_path:
        return False
    pointer.parent.mkdir(parents=True, exist_ok=True)
    tmp = pointer.with_name(f".{pointer.name}.tmp")
    tmp.write_text(json.dumps({"config_path": str(config_path)}))
    os.replace(tmp, pointer)
    return True
