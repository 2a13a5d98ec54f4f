"""kiln's layers hold: infra -> tasks -> serving -> common, no import cycle at any depth, steps independent of
each other, and the model server seeing only the codec and the bottom package (import-linter's contracts in
pyproject.toml, the same check as `make lint`)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    broken = done.stdout[done.stdout.find("Broken contracts"):] if "Broken contracts" in done.stdout else done.stdout
    assert done.returncode == 0, broken[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_model_server_contract_forbids_every_other_serving_module() -> None:
    """A new module beside serving/model_server must be named in the contract, or the server could import it."""
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    forbidden = next(c for c in contracts if c.get("source_modules") == ["serving.model_server"])["forbidden_modules"]
    siblings = {f"serving.{p.stem}" for p in (REPO / "serving").iterdir()
                if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()}
    allowed = {"serving.model_server", "serving.codec"}
    assert siblings - allowed == {m for m in forbidden if m.startswith("serving.")}
