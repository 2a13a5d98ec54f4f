"""Every kiln package makes its process use Keras 2 (tf_keras) on import, through `common`: the one place that
sets TF_USE_LEGACY_KERAS, so a process that imports any of them first never loads Keras 3."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("package", ["common", "serving", "tasks", "infra"])
def test_importing_a_kiln_package_sets_tf_use_legacy_keras(package: str) -> None:
    env = {name: value for name, value in os.environ.items() if name != "TF_USE_LEGACY_KERAS"}
    code = f"import os, {package}; print(os.environ.get('TF_USE_LEGACY_KERAS'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "1", done.stderr
