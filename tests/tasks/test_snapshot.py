"""The run snapshot: resolved once, it carries the config after params, the deployment's services and
copies of the user's files; steps read it and nothing from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.artifacts.run import RunSnapshot
from tasks.config import ConfigError, load_config
from tasks.context import ServingEndpoints
from tasks.snapshot import Deployment, resolve_run, run_config, run_context
from tasks.step_runner import run_step
from tests.tasks.conftest import churn_pipeline, evaluate_inputs, resolve, write_pipeline

SERVING = ServingEndpoints(rest_url="http://127.0.0.1:1", grpc_address="127.0.0.1:2", model_base_path="/m",
                           config_file="/m/models.config")


def test_the_snapshot_carries_the_model_module_the_schema_and_the_params(churn_csv, tmp_path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "body.py").write_text("def build(inputs, hparams):\n    return inputs\n")
    schema = tmp_path / "churn.schema.pbtxt"
    schema.write_text('feature { name: "tenure" type: INT }\n')
    config = churn_pipeline(tmp_path, churn_csv, data={"schema_path": "churn.schema.pbtxt"},
                            train={"model": "models/body.py:build"})
    run = RunSnapshot.read(resolve(config, tmp_path, "sqlite:////tmp/x.db", SERVING, params={"epochs": 7}))
    resolved = run_config(run)
    assert resolved.train.epochs == 7 and run.properties.overrides == {"epochs": 7}
    assert resolved.train.model == f"{run.uri}/user_model/body.py:build"
    assert Path(run.uri, "user_model", "body.py").read_text().startswith("def build")
    assert resolved.data.schema_path == f"{run.uri}/schema.pbtxt"
    assert Path(run.uri, "schema.pbtxt").read_text() == schema.read_text()
    assert run.properties.config_path == str(config) and len(run.properties.config_sha256) == 64
    ctx = run_context(run, try_number=3, step="train")
    assert (ctx.tracking_uri, ctx.serving, ctx.try_number, ctx.run_id) == (
        "sqlite:////tmp/x.db", SERVING, 3, f"manual__{tmp_path.name}")
    assert (ctx.registered_model_name, ctx.served_model_name, ctx.task_type) == ("kiln-churn", "churn", "classification")
    assert ctx.output_uri("model") == str(tmp_path / "artifacts" / "churn" / f"manual__{tmp_path.name}" / "train" / "model")


def test_the_yaml_may_name_its_own_services(churn_csv, tmp_path) -> None:
    config = churn_pipeline(tmp_path, churn_csv, registry={"tracking_uri": "http://mlflow:5000"},
                            serving={"rest_url": "http://tfs:8501", "grpc_address": "tfs:8500",
                                     "model_base_path": "/models", "config_file": "/models/models.config"})
    ctx = run_context(RunSnapshot.read(resolve(config, tmp_path, "sqlite:////tmp/x.db", SERVING)))
    assert ctx.tracking_uri == "http://mlflow:5000" and ctx.serving.rest_url == "http://tfs:8501"


def test_half_a_serving_target_is_refused(churn_csv, tmp_path) -> None:
    config = churn_pipeline(tmp_path, churn_csv, serving={"rest_url": "http://tfs:8501"})
    with pytest.raises(ConfigError, match="set rest_url, grpc_address, model_base_path and config_file together "
                                          r"\(missing grpc_address, model_base_path, config_file\)"):
        resolve(config, tmp_path)


def test_a_placement_changed_since_parsing_is_refused(churn_csv, tmp_path) -> None:
    config = churn_pipeline(tmp_path, churn_csv, placement={"steps": {"train": {"queue": "gpu"}}})
    parsed = {"default": {"executor": None, "queue": None, "pool": None}, "steps": {}}
    with pytest.raises(ConfigError, match="placement changed since Airflow parsed the DAG"):
        resolve_run(str(config), {}, Deployment(artifact_root=str(tmp_path)), "r", parsed_placement=parsed)


def test_a_missing_model_file_is_refused_when_resolving(churn_csv, tmp_path) -> None:
    config = churn_pipeline(tmp_path, churn_csv, train={"model": "models/absent.py:build"})
    with pytest.raises(ConfigError, match=r"train.model: file not found: .*models/absent.py"):
        resolve(config, tmp_path)


def test_steps_read_the_snapshot_not_the_environment(trained_churn, tmp_path, mlflow_store, monkeypatch) -> None:
    from mlflow import MlflowClient

    run = resolve(trained_churn["config"], tmp_path, mlflow_store, params={"thresholds": {}})
    for name in ("MLFLOW_TRACKING_URI", "KILN_HOME", "KILN_ARTIFACT_ROOT", "KILN_SERVING_REST"):
        monkeypatch.setenv(name, "/nonexistent-should-not-be-read")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'wrong.db'}")
    out = run_step("evaluate", run, inputs=evaluate_inputs(trained_churn))
    assert out["evaluation"].startswith(str(tmp_path / "artifacts"))
    runs = MlflowClient(mlflow_store).search_runs(
        [MlflowClient(mlflow_store).get_experiment_by_name("kiln").experiment_id],
        filter_string=f"tags.`kiln.run_id` = 'manual__{tmp_path.name}' and tags.`kiln.step` = 'evaluate'")
    assert len(runs) == 1 and not (tmp_path / "wrong.db").exists()


def test_env_variables_in_the_yaml_are_expanded_once_at_resolve(tmp_path, monkeypatch) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "d.csv").write_text("a,label\n1,0\n")
    monkeypatch.setenv("MY_DATA", str(data))
    config = write_pipeline(tmp_path, "p", Path("${MY_DATA}/d.csv"), {"type": "regression"})
    run = RunSnapshot.read(resolve(config, tmp_path))
    monkeypatch.delenv("MY_DATA")
    assert run_config(run).data.source == str(data / "d.csv")
    monkeypatch.setenv("UNRELATED", "1")
    with pytest.raises(ConfigError, match="uses environment variable MY_DATA, which is not set"):
        resolve(config, tmp_path, run_id="again")


def test_the_trigger_forms_prefilled_values_are_no_overrides(churn_csv, tmp_path, monkeypatch) -> None:
    """The form sends every param, each prefilled with the YAML's value (${VARS} unexpanded): those are
    not overrides, the run resolves the YAML as before; only what the user changed is one."""
    from tasks.registry import param_defaults

    monkeypatch.setenv("KILN_TEST_DATA", str(churn_csv.parent))
    config = churn_pipeline(tmp_path, churn_csv, data={"source": f"${{KILN_TEST_DATA}}/{churn_csv.name}"})
    form = param_defaults(load_config(config, expand_env=False))
    assert form["data_source"].startswith("${KILN_TEST_DATA}/")
    run = RunSnapshot.read(resolve(config, tmp_path, params={**form, "epochs": 2, "variants": None}))
    assert run.properties.overrides == {"epochs": 2, "variants": []}
    assert run_config(run).data.source == str(churn_csv) and run_config(run).optimize.variants == []


def test_a_tune_section_without_storage_gets_the_deployments_study_database(churn_csv, tmp_path) -> None:
    space = {"train.learning_rate": {"type": "float", "low": 0.001, "high": 0.01}}
    fleet = Deployment(artifact_root=str(tmp_path / "artifacts"), tuning_storage="postgresql://db/kiln_x_tuning")
    plain = churn_pipeline(tmp_path / "a", churn_csv, tune={"objective": "accuracy", "trials": 2, "space": space})
    resolved = run_config(RunSnapshot.read(resolve_run(str(plain), {}, fleet, "fleet-run")))
    assert resolved.tune.storage == "postgresql://db/kiln_x_tuning"
    own = churn_pipeline(tmp_path / "b", churn_csv, tune={"objective": "accuracy", "trials": 2, "space": space,
                                                         "storage": "sqlite:///own.db"})
    assert run_config(RunSnapshot.read(resolve_run(str(own), {}, fleet, "fleet-run"))).tune.storage == "sqlite:///own.db"
    untuned = churn_pipeline(tmp_path / "c", churn_csv)
    assert run_config(RunSnapshot.read(resolve_run(str(untuned), {}, fleet, "fleet-run"))).tune is None
