"""The whole main DAG with `dag.test()`: real steps on tiny data, a temp MLflow (SQLite) and a
temp kiln-model-server, in a fresh process with its own migrated Airflow database."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory) -> Path:
    """An Airflow database after `airflow db migrate`, made once for the module (about 15 s): each test runs on a
    copy of its own (`airflow_env`)."""
    home = tmp_path_factory.mktemp("airflow-template")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, cwd=home, check=True, capture_output=True,
                   timeout=180)
    return home / "airflow.db"


@pytest.fixture
def airflow_env(tmp_path, model_server, migrated_db) -> dict[str, str]:
    """A test's own Airflow home and database (a copy of the migrated one), MLflow store and kiln-model-server."""
    (tmp_path / "airflow").mkdir()
    database = shutil.copy(migrated_db, tmp_path / "airflow" / "airflow.db")
    return {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{database}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "KILN_HOME": str(tmp_path / "kiln"),
        "KILN_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "KILN_SERVING_GRPC": model_server.grpc_address,
        "KILN_SERVING_REST": model_server.rest_url,
        "KILN_SERVING_MODELS": str(model_server.model_base_path),
        "KILN_SERVING_CONFIG": str(model_server.config_file),
    }


def run_dag(tmp_path, env, conf, dag_id: str = "kiln_digits") -> dict:
    """dag.test() in a fresh process; returns run and task states."""
    result = subprocess.run([sys.executable, "-c", RUN_DAG, str(REPO / "dags"), json.dumps(conf), dag_id], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = json.loads(lines[-1].removeprefix("RESULT "))
    outcome["output"] = result.stdout + result.stderr
    return outcome


def parent_run_statuses(env) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("kiln")
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`kiln.role` = 'parent'")
    return [run.info.status for run in runs]


RUN_DAG = textwrap.dedent("""
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    dag = DagBag(dag_folder=sys.argv[1]).dags[sys.argv[3]]
    run = dag.test(run_conf=json.loads(sys.argv[2]))
    states = {ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": str(ti.state)
              for ti in run.get_task_instances()}
    print("RESULT " + json.dumps({"state": str(run.state), "tasks": states}))
""")


@pytest.mark.slow
def test_dag_test_trains_registers_and_serves(tmp_path, tiny_digits_csv, model_server, airflow_env):
    env = airflow_env
    conf = {"data_source": str(tiny_digits_csv), "epochs": 4, "thresholds": {"accuracy": 0.6},
            "variants": ["dynamic_range", "pruned"]}
    outcome = run_dag(tmp_path, env, conf)
    assert outcome["state"] == "success", (outcome["tasks"], outcome["output"][-3000:])
    # promotion: auto never waits (dag.test would wait for an answer for as long as it runs): nobody is asked,
    # and the grid shows the approval skipped, promote run.
    assert outcome["tasks"].pop("approve") == "skipped" and "promotion: auto; nobody is asked" in outcome["output"]
    assert outcome["tasks"].pop("tune") == "skipped", "no tune section: the mapped task has no instance"
    assert set(outcome["tasks"].values()) == {"success"}
    assert parent_run_statuses(env) == ["FINISHED"]

    from mlflow import MlflowClient

    aliases = MlflowClient(env["MLFLOW_TRACKING_URI"]).get_registered_model("kiln-digits").aliases
    assert {k: int(v) for k, v in aliases.items()} == {"champion": 1}

    from serving.client import RestClient
    from serving.deployer import read_config

    entry = read_config(model_server.config_file).model_config_list.config[0]
    assert entry.name == "digits" and dict(entry.version_labels) == {"stable": 1}
    header, first = tiny_digits_csv.read_text().splitlines()[:2]
    pixels = [float(v) for v in first.split(",")[:-1]]
    with RestClient(model_server.rest_url) as client:
        [prediction] = client.predict("digits", [pixels], label="stable").outputs
    assert prediction["class"] == prediction["class_id"] == int(first.split(",")[-1])
    assert len(prediction["probabilities"]) == 10

    # The champion scores the CSV in kiln_batch_digits: one mapped shard, then the commit.
    scored = tmp_path / "scored"
    batch = run_dag(tmp_path, env, {"data": str(tiny_digits_csv), "output": str(scored)}, dag_id="kiln_batch_digits")
    assert batch["state"] == "success", (batch["tasks"], batch["output"][-3000:])
    assert batch["tasks"] == {"plan_batch": "success", "score[0]": "success", "commit": "success"}
    import pyarrow.parquet as pq

    table = pq.read_table(scored)
    assert table.num_rows == len(tiny_digits_csv.read_text().splitlines()) - 1 and (scored / "_SUCCESS").exists()
    assert table.column("class").to_pylist()[0] == prediction["class"]


@pytest.mark.slow
def test_a_model_that_is_not_blessed_is_registered_not_pushed_and_the_run_succeeds(tmp_path, tiny_digits_csv,
                                                                                     model_server, airflow_env):
    """On a tuned copy of the digits pipeline: its tune task is mapped over tune.parallelism instances, which
    share the study, and train takes the best trial's values."""
    from infra.airflow.pipelines import register

    env = airflow_env
    tuned = tmp_path / "pipelines" / "tuned.yaml"
    tuned.parent.mkdir()
    shutil.copy(REPO / "pipelines" / "digits.schema.pbtxt", tuned.parent)
    tuned.write_text((REPO / "pipelines" / "digits.yaml").read_text().replace("pipeline: digits", "pipeline: tuned")
                     .replace("model_name: kiln-digits", "model_name: kiln-tuned") + textwrap.dedent("""
        tune:
          objective: accuracy
          trials: 4
          parallelism: 2
          space:
            train.learning_rate: {type: float, low: 0.001, high: 0.01, log: true}
            train.batch_size: {type: choice, values: [32, 64]}
        """))
    register(Path(env["KILN_HOME"]), "tuned", tuned)
    outcome = run_dag(tmp_path, env, {"data_source": str(tiny_digits_csv), "epochs": 2,
                                      "thresholds": {"accuracy": 1.0}, "variants": []}, dag_id="kiln_tuned")
    assert outcome["state"] == "success", (outcome["tasks"], outcome["output"][-3000:])
    tasks = outcome["tasks"]
    assert tasks["tune[0]"] == tasks["tune[1]"] == tasks["train"] == "success", "two mapped tune instances"
    assert tasks["evaluate"] == tasks["register"] == tasks["finish_tracking"] == "success", (tasks, outcome["output"][-6000:])
    assert {tasks[t] for t in ("push", "verify", "approve", "promote")} == {"skipped"}, "not promoted: in the grid"
    assert "not promoted: eval accuracy" in outcome["output"]
    assert parent_run_statuses(env) == ["FINISHED"]

    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    [version] = client.search_model_versions("name = 'kiln-tuned'")
    assert version.tags["blessed"] == "false" and client.get_registered_model("kiln-tuned").aliases == {}
    assert version.tags["kiln.tune_trials"] == "4" and set(json.loads(version.tags["kiln.tuned_params"])) == {
        "train.learning_rate", "train.batch_size"}, "the model version records the values it was trained with"
    experiment = client.get_experiment_by_name("kiln").experiment_id
    assert len(client.search_runs([experiment], "tags.`kiln.role` = 'trial'")) == 4
    [train] = client.search_runs([experiment], "tags.`kiln.step` = 'train'")
    assert train.data.tags["kiln.tune_study"].startswith("tuned-") and "tune_best_accuracy" in train.data.metrics
    assert model_server.config_file.read_text().strip() == "model_config_list {\n}", "serving untouched"


@pytest.mark.slow
def test_a_missing_column_stops_the_run_before_anything_is_trained(tmp_path, tiny_digits_csv, model_server,
                                                                  airflow_env):
    lines = tiny_digits_csv.read_text().splitlines()
    drop = lines[0].split(",").index("pixel_5")
    broken = tmp_path / "missing_column.csv"
    broken.write_text("\n".join(",".join(c for i, c in enumerate(line.split(",")) if i != drop) for line in lines))
    env = airflow_env
    outcome = run_dag(tmp_path, env, {"data_source": str(broken)})
    assert outcome["state"] == "failed"
    assert outcome["tasks"]["resolve"] == outcome["tasks"]["ingest"] == "success"
    assert outcome["tasks"]["validate"] == "failed"
    assert {outcome["tasks"][t] for t in ("transform", "train", "register", "push", "approve", "promote")} == \
        {"upstream_failed"}
    assert outcome["tasks"]["finish_tracking"] == "success"
    assert parent_run_statuses(env) == ["FAILED"]
    assert "column 'pixel_5' is required by the schema but missing from the data" in outcome["output"]
    [run_folder] = [p for p in (tmp_path / "artifacts" / "digits").iterdir() if p.name != ".cache"]  # the step cache
    assert sorted(p.name for p in run_folder.iterdir()) == ["ingest", "resolve", "validate"], "nothing past validation"
    assert model_server.config_file.read_text().strip() == "model_config_list {\n}"


@pytest.mark.slow
def test_one_serving_sync_run_serves_the_champion_moved_with_the_mlflow_client_alone(tmp_path, model_server,
                                                                                    airflow_env):
    from mlflow import MlflowClient

    from serving.client import RestClient
    from serving.deployer import ServingDeployer
    from tasks.serving_sync import sync
    from tests.registry import register_stand_ins

    env = airflow_env
    register_stand_ins(env["MLFLOW_TRACKING_URI"], "kiln-digits", tmp_path / "models", (1, 2))
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    client.set_registered_model_alias("kiln-digits", "champion", "1")
    assert sync(client, "kiln-digits", "digits", ServingDeployer(model_server)).after.labels == {"stable": 1}

    client.set_registered_model_alias("kiln-digits", "champion", "2")  # as in the MLflow UI: no kiln involved
    outcome = run_dag(tmp_path, env, {}, dag_id="kiln_serving_sync")
    assert outcome["state"] == "success", (outcome["tasks"], outcome["output"][-3000:])
    assert outcome["tasks"] == {"sync_digits": "success", "sync_cancer": "skipped", "sync_diabetes": "skipped"}
    with RestClient(model_server.rest_url) as rest:
        assert rest.label_version("digits", "stable") == 2
