"""The whole main DAG with `dag.test()`: real steps on tiny data, a temp MLflow (SQLite) and a
temp kiln-model-server, in a fresh process with its own migrated Airflow database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

RUN_DAG = textwrap.dedent("""
    import json, sys
    from airflow.dag_processing.dagbag import DagBag
    dag = DagBag(dag_folder=sys.argv[1]).dags["kiln_train_deploy"]
    run = dag.test(run_conf=json.loads(sys.argv[2]))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    print("RESULT " + json.dumps({"state": str(run.state), "tasks": states}))
""")


@pytest.mark.slow
def test_dag_test_trains_registers_and_serves(tmp_path, tiny_digits_csv, model_server):
    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "KILN_HOME": str(tmp_path / "kiln"),
        "KILN_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "KILN_SERVING_GRPC": model_server.grpc_address,
        "KILN_SERVING_REST": model_server.rest_url,
        "KILN_SERVING_MODELS": str(model_server.model_base_path),
        "KILN_SERVING_CONFIG": str(model_server.config_file),
    }
    subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, cwd=tmp_path, check=True,
                   capture_output=True, timeout=180)
    conf = {"data_source": str(tiny_digits_csv), "epochs": 4, "min_accuracy": 0.6}
    result = subprocess.run([sys.executable, "-c", RUN_DAG, str(REPO / "dags"), json.dumps(conf)], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, result.stdout[-3000:] + result.stderr[-3000:]
    outcome = json.loads(lines[-1].removeprefix("RESULT "))
    assert outcome["state"] == "success", (outcome, result.stderr[-3000:])
    assert set(outcome["tasks"].values()) == {"success"}

    from mlflow import MlflowClient

    aliases = MlflowClient(mlflow_uri).get_registered_model("kiln-digits").aliases
    assert {k: int(v) for k, v in aliases.items()} == {"champion": 1}

    from serving.client import RestClient
    from serving.deployer import read_config

    entry = read_config(model_server.config_file).model_config_list.config[0]
    assert entry.name == "digits" and dict(entry.version_labels) == {"stable": 1}
    header, first = tiny_digits_csv.read_text().splitlines()[:2]
    pixels = [float(v) for v in first.split(",")[:-1]]
    with RestClient(model_server.rest_url) as client:
        [prediction] = client.predict("digits", [pixels], label="stable").outputs
    assert prediction["digit"] == int(first.split(",")[-1])
    assert len(prediction["probabilities"]) == 10
