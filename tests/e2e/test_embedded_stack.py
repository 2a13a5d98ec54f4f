"""End to end, as a user runs it: `kiln up` on free ports in a temp KILN_HOME, `kiln run --json`
through the real Airflow scheduler, `kiln status`, `kiln down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KILN = str(Path(sys.executable).parent / "kiln")


@pytest.mark.slow
def test_kiln_up_run_status_down(tmp_path, tiny_digits_csv, port_factory):
    home = tmp_path / "kiln"
    env = {**os.environ, "KILN_HOME": str(home), "COLUMNS": "200"}
    for name in ("AIRFLOW", "MLFLOW", "SERVING_REST", "SERVING_GRPC", "AIRFLOW_WORKER_LOGS", "AIRFLOW_TRIGGER_LOGS"):
        env[f"KILN_{name}_PORT"] = str(port_factory())

    def kiln(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([KILN, *args], env=env, capture_output=True, text=True, timeout=timeout)

    up = kiln("up", timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        again = kiln("up", timeout=60)
        assert again.returncode == 2 and "already recorded" in again.stderr

        run = kiln("run", "--json", "--param", f"data_source={tiny_digits_csv}", "--param", "epochs=4",
                   "--param", "min_accuracy=0.6")
        assert run.returncode == 0, run.stderr[-4000:]
        summary = json.loads(run.stdout)
        assert summary["state"] == "success"
        assert list(summary["task_seconds"]) == [
            "ingest", "validate", "transform", "train", "evaluate", "optimize", "register", "push", "verify",
            "finish_tracking"]
        assert summary["eval_accuracy"] >= 0.6
        assert summary["mlflow"]["aliases"] == {"champion": 1}
        assert summary["serving"]["labels"] == {"stable": 1}
        assert summary["prediction"]["predicted_digit"] in range(10)
        assert summary["prediction"]["latency_ms"] > 0
        saved = json.loads(Path(summary["summary_path"]).read_text())
        assert saved["run_id"] == summary["run_id"]

        status = kiln("status", timeout=120)
        assert status.returncode == 0, status.stderr
        assert "healthy" in status.stdout and summary["run_id"] in status.stdout
    finally:
        down = kiln("down", timeout=120)
    assert down.returncode == 0, down.stderr
    assert not (home / "stack.json").exists()
