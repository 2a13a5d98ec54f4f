"""End to end, as a user runs it: `kiln up` on free ports in a temp KILN_HOME, then `kiln init` and
`kiln run --json` through the real Airflow scheduler for the digits demo, a CSV of one's own with a
string label, and a regression on a custom model module; REST predictions by feature name; `kiln
promote` and `kiln rollback`; the kiln_serving_sync DAG following an alias moved by hand; a run waiting
for an approval, rejected with `kiln reject`; `kiln status`; `kiln down`. One stack for the whole session
(tests/e2e/conftest.py)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tasks.model_registry import history
from tasks.registry import STEP_NAMES
from tests.data import write_churn_csv, write_house_csv
from tests.servers import wait_for

DIGITS_YAML = Path(__file__).resolve().parents[2] / "pipelines" / "digits.yaml"

pytestmark = pytest.mark.slow


def _airflow(kiln):
    from infra.cli.runner import airflow_client
    from infra.stack.stack import Stack

    return airflow_client(Stack.load(kiln.home))


def test_a_second_up_is_refused(kiln) -> None:
    again = kiln("up", timeout=60)
    assert again.returncode == 2 and "already recorded" in again.stderr


def test_digits_demo_pipeline(kiln, tiny_digits_csv) -> None:
    summary = kiln.run_json(str(Path(__file__).resolve().parents[2] / "pipelines" / "digits.yaml"),
                            "-p", f"data_source={tiny_digits_csv}", "-p", "epochs=4", "-p", "thresholds={accuracy: 0.6}",
                            # one post-training and one fine-tuned (QAT, in the training workers) variant: every
                            # variant's own build is covered by tests/tasks/test_tflite.py and test_optimize.py
                            "-p", "variants=[int8, qat_int8]")
    assert summary["state"] == "success" and summary["dag_id"] == "kiln_digits"
    assert list(summary["task_seconds"]) == [s for s in STEP_NAMES if s != "tune"], "in the registry's order"
    assert summary["task_states"]["tune"] == "skipped" and summary["tune"] is None, "no tune section: no instance"
    assert set(summary["metrics"]) == {"accuracy", "precision", "recall", "f1"} and summary["metrics"]["accuracy"] >= 0.6
    data = summary["data"]
    assert data["train"]["rows"] + data["eval"]["rows"] == 400 and data["train"]["format"] == "parquet"
    assert data["train"]["bytes"] > 0 and data["train"]["shards"] >= 1
    assert data["source"]["format"] == "csv" and data["source"]["bytes"] == Path(tiny_digits_csv).stat().st_size
    assert {step: c["reason"] for step, c in summary["cache"].items()} == dict.fromkeys(
        ["ingest", "validate", "transform", "train", "optimize"], "no earlier output"), "the stack's first run"
    blessing = summary["blessing"]
    assert blessing["blessed"] and summary["promoted"] and blessing["champion_version"] is None
    assert [c["name"] for c in blessing["checks"]] == ["accuracy >= 0.6", "accuracy vs champion"]
    optimize = summary["optimize"]
    assert optimize["baseline"]["metric_name"] == "accuracy" and optimize["baseline"]["gzip_bytes"] > 0
    assert optimize["selected"] in ["baseline", *(v["name"] for v in optimize["variants"])]
    assert summary["mlflow"]["aliases"] == {"champion": 1}
    assert summary["serving"]["labels"] == {"stable": 1}
    prediction = summary["prediction"]
    assert prediction["class"] in range(10) and prediction["latency_ms"] > 0
    assert Path(summary["summary_path"]).is_file()
    mlflow_ui = f"http://127.0.0.1:{kiln.env['KILN_MLFLOW_PORT']}"
    airflow = _airflow(kiln)
    evaluate_links = airflow.task_links("kiln_digits", summary["run_id"], "evaluate")
    assert evaluate_links["MLflow run"].startswith(f"{mlflow_ui}/#/experiments/")
    assert airflow.task_links("kiln_digits", summary["run_id"], "register") == {
        "MLflow run": airflow.task_links("kiln_digits", summary["run_id"], "register")["MLflow run"],
        "MLflow model version": f"{mlflow_ui}/#/models/kiln-digits/versions/1"}
    assert airflow.task_links("kiln_digits", summary["run_id"], "verify") == {
        "Served model status": f"{kiln.rest_url}/v1/models/digits"}
    assert airflow.task_links("kiln_digits", summary["run_id"], "promote") == {
        "Served model status": f"{kiln.rest_url}/v1/models/digits",
        "MLflow model version": f"{mlflow_ui}/#/models/kiln-digits/versions/1"}
    assert airflow.task_links("kiln_digits", summary["run_id"], "push") == {
        "Served model status": f"{kiln.rest_url}/v1/models/digits",
        "MLflow model version": f"{mlflow_ui}/#/models/kiln-digits/versions/1"}
    assert summary["infra_blessing"]["blessed"] and summary["infra_blessing"]["errors"] == 0
    # promotion: auto (the YAML's): nobody is asked, and the grid says so.
    assert summary["task_states"]["approve"] == "skipped" and summary["approval"] is None
    assert summary["promotion"] == {"version": 1, "why": "blessed and verified", "approved_by": None,
                                    "by": f"kiln_digits run {summary['run_id']}"}
    finished = kiln("approve", "digits", summary["run_id"], timeout=120)
    assert finished.returncode == 2 and finished.stderr.splitlines() == [
        f"error: run {summary['run_id']} of kiln_digits has finished (success): there is no approval to answer"]

    # A worse retrain: registered, not blessed, not served; the first version stays stable and champion.
    worse = kiln("run", "--json", str(Path(__file__).resolve().parents[2] / "pipelines" / "digits.yaml"),
                 "-p", f"data_source={tiny_digits_csv}", "-p", "epochs=1", "-p", "thresholds={accuracy: 0.1}",
                 "-p", "variants=[]")
    assert worse.returncode == 0, worse.stderr[-4000:]
    second = json.loads(worse.stdout)
    assert second["state"] == "success" and second["promoted"] is False
    # Only epochs and what comes after train changed: the data steps reuse the first run's outputs, in place.
    for step in ("ingest", "validate", "transform"):
        assert second["cache"][step]["hit"] and second["cache"][step]["from_run"] == summary["run_id"]
        assert f"{step:15s} success, cached (run {summary['run_id']})" in worse.stderr
    assert second["cache"]["train"] == {**second["cache"]["train"], "hit": False,
                                        "reason": "re-ran: train.epochs changed 4 → 1"}
    cached_from = airflow.task_links("kiln_digits", second["run_id"], "ingest")["Cached from (MLflow run)"]
    assert cached_from == airflow.task_links("kiln_digits", summary["run_id"], "ingest")["MLflow run"]
    assert {second["task_states"][t] for t in ("push", "verify", "approve", "promote")} == {"skipped"}
    assert second["task_states"]["infra_validate"] == "skipped", "a model that is not blessed is not even loaded"
    failed = [c for c in second["blessing"]["checks"] if not c["passed"]]
    assert failed[0]["name"] == "accuracy vs champion" and second["blessing"]["champion_version"] == 1
    assert f"not promoted: {failed[0]['reason']}" in worse.stderr
    assert second["mlflow"]["version"] == 2 and second["mlflow"]["blessed"] is False
    assert second["mlflow"]["aliases"] == {"champion": 1}
    assert second["serving"]["labels"] == {"stable": 1} and second["serving"]["versions"] == [1]
    status = kiln("status", timeout=120)
    assert "{'champion': 1}" in status.stdout and "{'stable': 1}" in status.stdout

    lineage = kiln("lineage", "digits", "2", "--json", timeout=120)
    assert lineage.returncode == 0, lineage.stderr
    walked = json.loads(lineage.stdout)
    assert walked["model"] == "kiln-digits" and walked["dag_run_id"] == second["run_id"]
    assert walked["blessed"] is False and walked["failed_check"] == failed[0]["reason"]
    from mlflow import MlflowClient

    registry = MlflowClient(mlflow_ui)
    for version in (1, 2):  # what the MLflow UI shows: both versions, each with its model card
        run_id = registry.get_model_version("kiln-digits", str(version)).run_id
        assert "model_card.md" in {a.path for a in registry.list_artifacts(run_id)}


def test_promote_rollback_and_the_serving_sync_follow_the_registry(kiln) -> None:
    """After the digits runs: v1 champion and stable, v2 registered but not blessed."""
    refused = kiln("promote", "digits", "2", timeout=120)
    assert refused.returncode == 2 and "kiln-digits v2 is not blessed" in refused.stderr
    promoted = kiln("promote", "digits", "2", "--reason", "e2e: by hand", "--json", timeout=120)
    assert promoted.returncode == 0, promoted.stderr
    change = json.loads(promoted.stdout)
    assert change["served_before"]["labels"] == {"stable": 1}
    assert change["served_after"] == {"versions": [1, 2], "labels": {"stable": 2}}
    assert change["aliases_after"] == {"champion": 2, "previous-champion": 1}
    back = kiln("rollback", "digits", "--reason", "e2e", timeout=120)
    assert back.returncode == 0, back.stderr
    assert "served label stable" in back.stdout and "v2" in back.stdout and "v1" in back.stdout
    with httpx.Client() as rest:
        metadata = rest.get(f"{kiln.rest_url}/v1/models/digits/labels/stable/metadata").json()
    assert metadata["model_spec"]["version"] == "1"

    # Someone moves champion in the MLflow UI; the kiln_serving_sync DAG makes the server follow.
    MlflowClient(f"http://127.0.0.1:{kiln.env['KILN_MLFLOW_PORT']}").set_registered_model_alias(
        "kiln-digits", "champion", "2")
    airflow = _airflow(kiln)
    run_id = airflow.trigger("kiln_serving_sync", {})
    deadline = time.monotonic() + 300
    while (state := airflow.dag_run("kiln_serving_sync", run_id)["state"]) not in ("success", "failed"):
        assert time.monotonic() < deadline, f"kiln_serving_sync still {state}"
        time.sleep(2)
    tasks = {t.task_id: t.state for t in airflow.task_states("kiln_serving_sync", run_id)}
    assert state == "success" and tasks["sync_digits"] == "success", tasks
    assert airflow.task_links("kiln_serving_sync", run_id, "sync_digits") == {
        "Served model status": f"{kiln.rest_url}/v1/models/digits",
        "MLflow model version": f"http://127.0.0.1:{kiln.env['KILN_MLFLOW_PORT']}/#/models/kiln-digits/versions/2"}
    with httpx.Client() as rest:
        metadata = rest.get(f"{kiln.rest_url}/v1/models/digits/labels/stable/metadata").json()
    assert metadata["model_spec"]["version"] == "2"


def test_a_rejected_approval_withdraws_the_canary_and_stable_stays(kiln, tiny_digits_csv) -> None:
    """After the serving sync: a run that asks for an approval waits for it, saying how to answer; rejected
    from the command line, its canary (v3) is withdrawn and what served before serves on. An approval is
    answered once: a second answer, or one when no run waits, is one line."""
    registry = MlflowClient(f"http://127.0.0.1:{kiln.env['KILN_MLFLOW_PORT']}")
    champion_before = {k: int(v) for k, v in registry.get_registered_model("kiln-digits").aliases.items()}
    stable_before = _stable(kiln)
    with kiln.running("run", "--json", str(DIGITS_YAML), "-p", f"data_source={tiny_digits_csv}", "-p", "epochs=2",
                      "-p", "variants=[]", "-p", "thresholds={accuracy: 0.3}", "-p", "change_thresholds={}",
                      "-p", "promotion=approval") as run:
        airflow = _airflow(kiln)
        [asked] = wait_for(lambda: [d for d in airflow.waiting_for_input("kiln_digits", "approve")
                                    if d["task_instance"]["state"] == "awaiting_input"], 900, 2, "the approval")
        run_id = asked["task_instance"]["dag_run_id"]
        assert asked["subject"] == "Promote digits v3 to stable?"
        assert "| accuracy >= 0.3 |" in asked["body"] and f"### Against the champion (v{stable_before})" in asked["body"]

        rejected = kiln("reject", "digits", "--comment", "e2e: not this one", timeout=120)
        assert rejected.returncode == 0, rejected.stderr
        assert rejected.stdout.strip() == f"run {run_id} of kiln_digits rejected: the canary is withdrawn, stable " \
                                          f"stays as it is (answered as admin)"
        twice = kiln("approve", "digits", run_id, timeout=120)
        assert twice.returncode == 2 and len(twice.stderr.splitlines()) == 1
        assert re.fullmatch(rf"error: the approval of run {run_id} of kiln_digits was already answered: rejected by "
                            r"admin at [\d-]+ [\d:]+ UTC \(e2e: not this one\)", twice.stderr.strip()), twice.stderr
        nobody = kiln("reject", "digits", timeout=120)
        assert nobody.returncode == 2
        assert nobody.stderr.splitlines() == ["error: no run of kiln_digits is waiting for an approval"]
        stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr[-4000:]
    assert f"approve awaiting approval: kiln approve digits {run_id} --comment" in stderr
    summary = json.loads(stdout)
    assert summary["state"] == "success" and summary["promoted"] is False and summary["mlflow"]["version"] == 3
    assert (summary["task_states"]["approve"], summary["task_states"]["promote"]) == ("success", "skipped")
    assert {k: summary["approval"][k] for k in ("decision", "by", "comment")} == \
        {"decision": "rejected", "by": "admin", "comment": "e2e: not this one"}
    assert summary["not_promoted"] == "v3 rejected by admin: e2e: not this one"
    assert summary["mlflow"]["aliases"] == champion_before, "no challenger left, the champion as it was"
    assert summary["serving"]["labels"] == {"stable": stable_before} and 3 not in summary["serving"]["versions"]
    withdrawn = [m for m in history(registry, "kiln-digits") if m["alias"] == "challenger"][-1]
    assert (withdrawn["from_version"], withdrawn["to_version"]) == (3, None)
    assert withdrawn["why"] == "v3 rejected by admin: e2e: not this one"


def _stable(kiln) -> int:
    with httpx.Client() as rest:
        return int(rest.get(f"{kiln.rest_url}/v1/models/digits/labels/stable/metadata").json()["model_spec"]["version"])


def test_init_and_run_a_csv_of_ones_own_with_a_string_label(kiln) -> None:
    csv = write_churn_csv(kiln.cwd / "churn.csv")
    init = kiln("init", str(csv), "--label", "churned", "--out", str(kiln.cwd / "mine"))
    assert init.returncode == 0, init.stderr
    assert "task: classification with classes ['no', 'yes']" in init.stdout
    # One post-training variant (the tfmot fine-tunes are tested on their own): string features convert to
    # TFLite builtins, and the TFLite file is what serves.
    summary = kiln.run_json(str(kiln.cwd / "mine" / "churn.yaml"), "-p", "epochs=8", "-p", "variants=[int8]",
                            "-p", "budget=100")
    assert summary["state"] == "success" and summary["dag_id"] == "kiln_churn"
    assert {"accuracy", "auc"} <= set(summary["metrics"]) and summary["metrics"]["accuracy"] > 0.7
    assert summary["promoted"]
    assert summary["optimize"]["baseline"]["skipped_reason"] is None
    assert (summary["shipped"]["variant"], summary["shipped"]["format"]) == ("int8", "tflite")
    assert summary["prediction"]["class"] in ("yes", "no")

    row = {"tenure": 70, "plan": "premium", "monthly": 20.5, "paperless": False, "region": "north"}
    answer = httpx.post(f"{kiln.rest_url}/v1/models/churn/labels/stable:predict", json={"instances": [row]})
    assert answer.status_code == 200, answer.text
    [prediction] = answer.json()["predictions"]
    assert prediction["class"] == "no", "a long-tenured, cheap customer stays"
    assert prediction["class_id"] == 0 and len(prediction["probabilities"]) == 2

    status = kiln("status", timeout=120)
    assert status.returncode == 0, status.stderr
    assert "churn" in status.stdout and summary["run_id"] in status.stdout and "{'stable': 1}" in status.stdout


CUSTOM_BODY = """import tf_keras as keras


def build(inputs, hparams):
    x = keras.layers.Dense(hparams.get("units", 32), activation="relu", name="wide")(inputs)
    return keras.layers.Dense(16, activation="relu", name="narrow")(x)
"""


def test_a_regression_on_a_custom_model_module(kiln) -> None:
    folder = kiln.cwd / "house"
    csv = write_house_csv(kiln.cwd / "house.csv")
    init = kiln("init", str(csv), "--label", "price", "--out", str(folder), "--model", "models/house_body.py:build")
    assert init.returncode == 0, init.stderr
    assert "task: regression" in init.stdout
    (folder / "models").mkdir()
    (folder / "models" / "house_body.py").write_text(CUSTOM_BODY)
    summary = kiln.run_json(str(folder / "house.yaml"), "-p", "epochs=40", "-p", "learning_rate=0.01",
                            "-p", "variants=[dynamic_range]")  # the subject is the custom body, not compression
    assert summary["state"] == "success" and summary["task"] == "regression"
    assert set(summary["metrics"]) == {"rmse", "mae", "r2"} and summary["metrics"]["r2"] > 0.5
    assert summary["blessing"]["checks"][0]["metric"] == "rmse" and summary["blessing"]["blessed"]

    instance = {"area": 120.0, "rooms": 3, "district": "centre", "age": 10.0}
    answer = httpx.post(f"{kiln.rest_url}/v1/models/house/labels/stable:predict", json={"instances": [instance]})
    assert answer.status_code == 200, answer.text
    [price] = answer.json()["predictions"]
    expected = 2.5 * 120 + 15 * 3 + 80 - 0.6 * 10  # the generator's formula without its noise
    assert abs(price - expected) < 0.25 * expected
