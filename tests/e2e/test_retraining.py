"""Retraining that starts by itself, on the shared stack's real scheduler: `kiln data add` to an
on_new_data pipeline runs it on the new span; to an on_drift pipeline, a clean span runs the drift
monitor and no retrain, a drifted span runs the monitor and then the retrain; a malformed span is
refused by `kiln data add` in one line with nothing copied; `kiln status` shows the schedule, the
last data event and the last drift check. The drift retrain asks for an approval nobody gives: it times out,
its canary is withdrawn and the timeout counted."""

from __future__ import annotations

import csv
import json
import re
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from infra.cli.runner import airflow_client
from infra.stack.stack import Stack
from tasks.artifacts.approval import ApprovalDecision
from tasks.artifacts.examples import Examples
from tasks.model_registry import APPROVAL_TIMEOUTS_TAG
from tests.data import write_churn_csv

pytestmark = pytest.mark.slow
RUN_TIMEOUT = 600


def _yaml(folder: Path, name: str, schedule: str, serving: str = "") -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        pipeline: {name}
        data: {{source: "{folder}/{name}/span-{{SPAN}}.csv", label_column: churned}}
        task: {{type: classification}}
        schedule: {schedule}
        train: {{epochs: 2, batch_size: 32}}
        evaluate: {{thresholds: {{accuracy: 0.5}}, change_thresholds: {{}}}}
        optimize: {{variants: []}}
        serving: {{model_name: {name}, verify_examples: 8, infra_examples: 5{serving}}}
        # A few hundred rows: sampling noise alone reaches a JS distance of ~0.1 over ten buckets.
        monitor: {{drift: {{numeric: 0.3, categorical: 0.3}}}}
    """))
    return path


def _drifted(source: Path, target: Path) -> Path:
    """The same customers, paying far more and all on the premium plan."""
    with source.open() as fh:
        rows = list(csv.DictReader(fh))
    with target.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "monthly": str(float(row["monthly"] or 60) + 300), "plan": "premium"})
    return target


def _runs(kiln, dag_id: str) -> list[dict]:
    return airflow_client(Stack.load(kiln.home), retry_for=30).latest_runs(dag_id, limit=20)


def _wait_for_run(kiln, dag_id: str, after: set[str], run_type: str = "asset_triggered") -> dict:
    """The first run of `dag_id` not in `after`, once it finished (success expected)."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        new = [r for r in _runs(kiln, dag_id) if r["dag_run_id"] not in after]
        if new and new[-1]["state"] in ("success", "failed"):
            run = new[-1]
            assert run["run_type"] == run_type and run["state"] == "success", run
            return run
        time.sleep(2)
    raise AssertionError(f"no finished {run_type} run of {dag_id} within {RUN_TIMEOUT}s")


def _span_of(kiln, dag_id: str, run_id: str) -> int | None:
    client = airflow_client(Stack.load(kiln.home), retry_for=30)
    return Examples.read(client.xcom(dag_id, run_id, "ingest")["examples"]).properties.span


def _add(kiln, csv_path: Path, pipeline: str) -> dict:
    added = kiln("data", "add", str(csv_path), "--pipeline", pipeline, "--json", timeout=300)
    assert added.returncode == 0, added.stderr
    return json.loads(added.stdout)


def test_a_new_span_retrains_an_on_new_data_pipeline_and_a_malformed_one_is_refused(kiln) -> None:
    config = _yaml(kiln.cwd, "fresh", "on_new_data")
    first = _add(kiln, write_churn_csv(kiln.cwd / "fresh-1.csv", rows=300), str(config))
    assert first["span"] == 1 and first["asset"] == "kiln_fresh_data" and first["path"].endswith("span-1.csv")
    run = _wait_for_run(kiln, "kiln_fresh", after=set())
    assert _span_of(kiln, "kiln_fresh", run["dag_run_id"]) == 1

    malformed = kiln.cwd / "fresh-bad.csv"
    malformed.write_text("tenure,plan,churned\n1,basic,yes\n")
    refused = kiln("data", "add", str(malformed), "--pipeline", "fresh", timeout=120)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "fresh-bad.csv: missing columns: monthly, paperless, region" in refused.stderr
    assert sorted(p.name for p in (kiln.cwd / "fresh").iterdir()) == ["span-1.csv"], "nothing copied"

    status = kiln("status", timeout=120)
    assert status.returncode == 0, status.stderr
    assert "on_new_data" in status.stdout and "span 1" in status.stdout


def test_only_a_drifted_span_retrains_an_on_drift_pipeline(kiln) -> None:
    """A retrain nobody started asks for an approval (promotion: approval in the YAML); nobody answers it in
    time: its canary is withdrawn, the champion serves on and the timeout is counted."""
    config = _yaml(kiln.cwd, "drifty", "on_drift", ", promotion: approval, promotion_timeout_minutes: 0.1")
    base = write_churn_csv(kiln.cwd / "drifty-1.csv", rows=300)
    _add(kiln, base, str(config))  # span 1: no champion yet, so the monitor has nothing to compare
    champion = kiln.run_json(str(config), "-p", "promotion=auto")
    assert champion["state"] == "success" and champion["promoted"], "the champion the monitor compares with"
    before = {r["dag_run_id"] for r in _runs(kiln, "kiln_drifty")}
    checked = {r["dag_run_id"] for r in _runs(kiln, "kiln_monitor_drifty")}

    _add(kiln, write_churn_csv(kiln.cwd / "drifty-2.csv", rows=300, seed=7), "drifty")  # same distribution
    clean = _wait_for_run(kiln, "kiln_monitor_drifty", after=checked)
    checked.add(clean["dag_run_id"])
    client = airflow_client(Stack.load(kiln.home), retry_for=30)
    report = client.xcom("kiln_monitor_drifty", clean["dag_run_id"], "check_drift")
    assert report["drifted"] is False and report["span"] == 2 and report["champion_version"] == 1
    states = {t.task_id: t.state for t in client.task_states("kiln_monitor_drifty", clean["dag_run_id"])}
    assert states == {"check_drift": "success", "trigger_retrain": "skipped"}
    # kiln_drifty runs only on an event of its drift asset, which trigger_retrain (skipped) would have posted.
    drift_asset = client.asset("kiln_drifty_drift")
    assert drift_asset is not None and client.last_asset_event(drift_asset["id"]) is None, "no drift, no retrain"
    assert {r["dag_run_id"] for r in _runs(kiln, "kiln_drifty")} == before

    _add(kiln, _drifted(base, kiln.cwd / "drifty-3.csv"), "drifty")
    drifted = _wait_for_run(kiln, "kiln_monitor_drifty", after=checked)
    report = client.xcom("kiln_monitor_drifty", drifted["dag_run_id"], "check_drift")
    assert report["drifted"] and {"monthly", "plan"} <= set(report["drifted_features"])
    retrain = _wait_for_run(kiln, "kiln_drifty", after=before)
    assert _span_of(kiln, "kiln_drifty", retrain["dag_run_id"]) == 3

    states = {t.task_id: t.state for t in client.task_states("kiln_drifty", retrain["dag_run_id"])}
    assert (states["approve"], states["promote"]) == ("success", "skipped")
    decided = ApprovalDecision.read(client.xcom("kiln_drifty", retrain["dag_run_id"], "approve")["approval"])
    assert (decided.properties.decision, decided.properties.by, decided.properties.version) == ("timed_out", None, 2)
    registry = MlflowClient(f"http://127.0.0.1:{kiln.env['KILN_MLFLOW_PORT']}").get_registered_model("kiln-drifty")
    assert registry.tags[APPROVAL_TIMEOUTS_TAG] == "1"
    assert {k: int(v) for k, v in registry.aliases.items()} == {"champion": 1}, "withdrawn; the champion serves on"
    late = kiln("approve", "drifty", retrain["dag_run_id"], timeout=120)
    assert late.returncode == 2 and re.fullmatch(
        rf"error: the approval of run {re.escape(retrain['dag_run_id'])} of kiln_drifty timed out at [\d-]+ [\d:]+ UTC: "
        r"it can no longer be answered", late.stderr.strip()), late.stderr

    status = kiln("status", timeout=120)
    assert "on_drift" in status.stdout and "drift in" in status.stdout
