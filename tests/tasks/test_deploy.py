"""Push, verify and promote against a live kiln-model-server, through TF Serving's protocol only: every task's
model serves raw features by name; the gate decisions on the shipped artifact are in test_shipped_artifact.py."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import httpx
import pytest

from serving.client import RestClient, ServingClientError
from tasks.artifacts.optimized import VERSION_FOLDER, OptimizedModel
from tasks.artifacts.promotion import Promotion
from tasks.artifacts.pushed import PushedModel
from tasks.artifacts.registered import RegisteredModel
from tasks.artifacts.verification import ServingVerification
from tasks.context import ServingEndpoints
from tasks.step_runner import run_step, run_steps
from tests.data import first_row
from tests.servers import start_server
from tests.tasks.conftest import resolve

pytestmark = pytest.mark.slow
DEPLOY = ["optimize", "evaluate", "register", "infra_validate", "push", "verify", "promote"]


def endpoints(target) -> ServingEndpoints:
    return ServingEndpoints(rest_url=target.rest_url, grpc_address=target.grpc_address,
                            model_base_path=str(target.model_base_path), config_file=str(target.config_file))


def _deploy(trained: dict, root: Path, tracking: str, server, **params) -> tuple[str, dict[str, str]]:
    config = root / "pipeline.yaml"
    config.write_text(trained["config"].read_text() + f"registry: {{model_name: m-{uuid.uuid4().hex[:8]}}}\n")
    # Only the variants a test asks for: optimize's fine-tunes are tested in test_optimize.
    run = resolve(config, root, tracking, endpoints(server), params={"thresholds": {}, "change_thresholds": {},
                                                                     "variants": ["dynamic_range"], **params})
    return run, run_steps(run, DEPLOY, available=trained)


def test_digits_is_served_by_label_with_the_digit_as_its_class(trained_digits, tmp_path, mlflow_store,
                                                              model_server, tiny_digits_csv) -> None:
    _, out = _deploy(trained_digits, tmp_path, mlflow_store, model_server)
    verified = ServingVerification.read(out["verification"]).properties
    assert verified.labels == {"canary": 1}, "verified as canary"
    assert verified.max_relative_diff <= 1e-4 and verified.examples == 32
    promoted = Promotion.read(out["promotion"]).properties
    assert promoted.labels == {"stable": 1} and promoted.mlflow_aliases == {"champion": 1}
    assert promoted.why == "blessed and verified" and promoted.approved_by is None, "promotion: auto"
    pushed = PushedModel.read(out["pushed"]).properties
    version_dir = Path(pushed.version_dir)
    model_file = {"tflite": "model.tflite", "saved_model": "saved_model.pb"}
    assert [p.name for p in version_dir.iterdir() if p.name in model_file.values()] == \
        [model_file[pushed.artifact_format]], "one model file: the server's format follows the folder"
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
    row = first_row(tiny_digits_csv)
    pixels = [float(row[f"pixel_{i}"]) for i in range(64)]
    with RestClient(model_server.rest_url) as client:
        [answer] = client.predict("digits", [{"pixels": pixels}], label="stable").outputs
    assert answer["class"] == answer["class_id"] == int(row["label"])


def test_churn_answers_a_csv_row_by_feature_name_with_the_labels_value(trained_churn, churn_csv, tmp_path,
                                                                      mlflow_store, model_server) -> None:
    _deploy(trained_churn, tmp_path, mlflow_store, model_server)
    row = {"tenure": 3, "plan": "basic", "monthly": 99.5, "paperless": True, "region": "north"}
    with RestClient(model_server.rest_url) as client:
        [answer] = client.predict("churn", [row], label="stable").outputs
    assert answer["class"] in ("yes", "no") and answer["class"] == ["no", "yes"][answer["class_id"]]
    assert len(answer["probabilities"]) == 2

    predict = f"{model_server.rest_url}/v1/models/churn/labels/stable:predict"
    missing = httpx.post(predict, json={"instances": [{k: v for k, v in row.items() if k != "region"}]})
    assert missing.status_code == 400 and "keys must be equal to" in missing.json()["error"]
    wrong_type = httpx.post(predict, json={"instances": [{**row, "tenure": "three"}]})
    assert wrong_type.status_code == 400
    assert "key: tenure" in wrong_type.json()["error"] and "is not of expected type: float" in wrong_type.json()["error"]


def test_regression_serves_one_prediction_per_row(trained_house, tmp_path, mlflow_store, model_server) -> None:
    _deploy(trained_house, tmp_path, mlflow_store, model_server)
    with RestClient(model_server.rest_url) as client:
        answer = client.predict("house", [{"area": 120.0, "rooms": 3, "district": "suburb", "age": 10.0}],
                                label="stable")
    [value] = answer.outputs  # one output: TF Serving leaves its name out
    assert isinstance(value, float) and 100 < value < 1000
    assert answer.rows(["prediction"]) == [{"prediction": value}]


def test_an_unblessed_model_is_registered_but_not_pushed_and_serving_is_untouched(
        trained_digits, tmp_path, mlflow_store, model_server) -> None:
    from tasks.step_runner import StepSkipped

    _deploy(trained_digits, tmp_path, mlflow_store, model_server)
    before = model_server.config_file.read_text()
    second = resolve(tmp_path / "pipeline.yaml", tmp_path, mlflow_store, endpoints(model_server),
                     params={"thresholds": {"accuracy": 1.0}, "variants": []}, run_id="manual__second")
    out = run_steps(second, ["optimize", "evaluate", "register"], available=trained_digits)
    assert RegisteredModel.read(out["registered"]).properties.blessed is False
    with pytest.raises(StepSkipped, match=r"^not promoted: eval accuracy 0\.\d{4} does not meet"):
        run_step("infra_validate", second, inputs={k: out[k] for k in ("evaluation", "registered", "optimized",
                                                                      "model", "examples")})
    assert model_server.config_file.read_text() == before
    assert not (model_server.model_base_path / "digits" / "2").exists()


def test_a_forced_push_of_an_unblessed_model_records_its_reason(trained_digits, tmp_path, mlflow_store,
                                                               model_server) -> None:
    from mlflow import MlflowClient

    from tasks.model_registry import history

    run, out = _deploy(trained_digits, tmp_path, mlflow_store, model_server, thresholds={"accuracy": 1.0},
                       force_push_reason="hotfix for ticket 42")
    pushed = PushedModel.read(out["pushed"]).properties
    assert pushed.forced_reason == "hotfix for ticket 42" and pushed.labels == {"canary": 1}
    name = RegisteredModel.read(out["registered"]).properties.model_name
    client = MlflowClient(mlflow_store)
    assert client.get_model_version(name, "1").tags["kiln.forced_push_reason"] == "hotfix for ticket 42"
    champion = [e for e in history(client, name) if e["alias"] == "champion"]
    assert champion[-1]["to_version"] == 1 and champion[-1]["why"] == "forced: hotfix for ticket 42"


def test_lineage_walks_from_a_served_version_to_the_dag_run_data_and_schema(trained_digits, tmp_path,
                                                                           mlflow_store, model_server) -> None:
    from infra.cli.lineage import lineage
    from tasks.artifacts.examples import Examples
    from tasks.artifacts.schema import Schema

    run, out = _deploy(trained_digits, tmp_path, mlflow_store, model_server)
    with RestClient(model_server.rest_url) as client:
        served = client.label_version("digits", "stable")
    name = RegisteredModel.read(out["registered"]).properties.model_name
    found = lineage(mlflow_store, name, served)  # MLflow alone from here
    assert found["dag_id"] == "kiln_digits" and found["dag_run_id"] == run.split("/")[-3]
    assert found["data_fingerprint"] == Examples.read(trained_digits["examples"]).properties.source_sha256
    assert found["schema"]["features"] == [f.name for f in Schema.read(trained_digits["schema"]).schema().feature]
    assert found["aliases"] == ["champion"] and found["blessed"] is True
    assert found["parent_run_status"] in ("RUNNING", "FINISHED") and found["config_sha256"]
    assert found["model_card"].endswith("/model_card.md")


def _until_infra(trained: dict, root: Path, tracking: str, server, **params) -> tuple[str, dict[str, str]]:
    config = root / "pipeline.yaml"
    config.write_text(trained["config"].read_text() + f"registry: {{model_name: m-{uuid.uuid4().hex[:8]}}}\n")
    run = resolve(config, root, tracking, endpoints(server), params={"thresholds": {}, "change_thresholds": {},
                                                                     "variants": [], **params})
    return run, run_steps(run, ["optimize", "evaluate", "register"], available=trained)


def test_a_candidate_that_does_not_load_in_the_sandbox_is_not_infra_blessed_nor_pushed(
        trained_digits, tmp_path, mlflow_store, model_server) -> None:
    import shutil

    from tasks.artifacts.infra_blessing import InfraBlessing
    from tasks.step_runner import StepSkipped

    run, out = _until_infra(trained_digits, tmp_path, mlflow_store, model_server)
    optimized = OptimizedModel.read(out["optimized"])
    corrupt = str(tmp_path / "corrupt")
    with OptimizedModel.publish(corrupt) as published:  # the same version folder, its weights corrupted
        shutil.copytree(optimized.version_folder, published.dir / VERSION_FOLDER)
        for variables in (published.dir / VERSION_FOLDER / "variables").glob("variables.data*"):
            variables.write_bytes(b"corrupt")
        published.properties = optimized.properties
    inputs = {"evaluation": out["evaluation"], "registered": out["registered"], "optimized": corrupt}
    blessing_uri = run_step("infra_validate", run, inputs={**inputs, "model": out["model"],
                                                           "examples": out["examples"]})["infra_blessing"]
    blessing = InfraBlessing.read(blessing_uri).properties
    assert blessing.blessed is False and blessing.reason.startswith("the candidate did not load in the sandbox")
    with pytest.raises(StepSkipped, match="^not promoted: the candidate did not load in the sandbox"):
        run_step("push", run, inputs={**inputs, "infra_blessing": blessing_uri})
    assert model_server.config_file.read_text().strip() == "model_config_list {\n}", "serving untouched"


def test_a_candidate_too_slow_in_the_sandbox_is_not_infra_blessed(trained_digits, tmp_path, mlflow_store,
                                                                 model_server) -> None:
    from tasks.artifacts.infra_blessing import InfraBlessing

    config = tmp_path / "slow.yaml"
    run, out = _until_infra(trained_digits, tmp_path, mlflow_store, model_server)
    config.write_text((tmp_path / "pipeline.yaml").read_text() + "serving: {max_p99_ms: 0.001, infra_examples: 5}\n")
    slow = resolve(config, tmp_path, mlflow_store, endpoints(model_server), params={"variants": []}, run_id="slow")
    blessing = InfraBlessing.read(run_step("infra_validate", slow, inputs={
        k: out[k] for k in ("evaluation", "registered", "optimized", "model", "examples")})["infra_blessing"]).properties
    assert blessing.blessed is False and "exceeds serving.max_p99_ms 0.001" in blessing.reason
    assert blessing.load_seconds > 0 and blessing.requests == 10 and blessing.errors == 0
    assert 0 < blessing.rest_p50_ms <= blessing.rest_p99_ms and 0 < blessing.grpc_p50_ms <= blessing.grpc_p99_ms


def test_a_server_that_is_down_fails_the_push_and_nothing_changes(trained_digits, tmp_path, mlflow_store,
                                                                  model_server) -> None:
    from mlflow import MlflowClient

    from tasks.model_registry import aliases
    from tests.servers import free_port

    run, out = _deploy(trained_digits, tmp_path, mlflow_store, model_server)  # v1 is served and champion
    name = RegisteredModel.read(out["registered"]).properties.model_name
    dead = ServingEndpoints(rest_url=f"http://127.0.0.1:{free_port()}", grpc_address=f"127.0.0.1:{free_port()}",
                            model_base_path=str(model_server.model_base_path), config_file=str(model_server.config_file))
    second = resolve(tmp_path / "pipeline.yaml", tmp_path, mlflow_store, dead,
                     params={"thresholds": {}, "change_thresholds": {}, "variants": []}, run_id="manual__down")
    staged = run_steps(second, ["optimize", "evaluate", "register", "infra_validate"], available=trained_digits)
    config_before = model_server.config_file.read_text()
    with pytest.raises(ServingClientError, match="GetModelStatus"):
        run_step("push", second, inputs={k: staged[k] for k in ("evaluation", "infra_blessing", "registered",
                                                                "optimized")})
    assert not (model_server.model_base_path / "digits" / "2").exists(), "nothing written on disk"
    assert model_server.config_file.read_text() == config_before
    assert aliases(MlflowClient(mlflow_store), name) == {"champion": 1}, "MLflow as before push"
    assert "kiln.forced_push_reason" not in MlflowClient(mlflow_store).get_model_version(name, "2").tags


def test_a_deploy_a_promote_and_a_rollback_lose_no_request_on_stable(trained_digits, tmp_path, mlflow_store,
                                                                     model_server, tiny_digits_csv) -> None:
    from infra.cli.serving_ops import PipelineServing, promote_version, rollback_champion
    from tasks.config import load_config
    from tasks.snapshot import Deployment
    from tests.load import SteadyLoad

    _, first = _deploy(trained_digits, tmp_path, mlflow_store, model_server)
    row = first_row(tiny_digits_csv)
    pixels = [float(row[f"pixel_{i}"]) for i in range(64)]
    second = resolve(tmp_path / "pipeline.yaml", tmp_path, mlflow_store, endpoints(model_server),
                     params={"thresholds": {}, "change_thresholds": {}, "variants": []}, run_id="manual__second")
    serving = PipelineServing.of(load_config(tmp_path / "pipeline.yaml"),
                                 Deployment(str(tmp_path), mlflow_store, endpoints(model_server)))
    with SteadyLoad(model_server.rest_url, model_server.grpc_address, "digits", {"pixels": pixels}) as load:
        promoted = run_steps(second, DEPLOY, available=trained_digits)["promotion"]
        assert Promotion.read(promoted).properties.labels == {"stable": 2}
        assert promote_version(serving, 1, "back to the first", "test").sync.after.labels == {"stable": 1}
        assert rollback_champion(serving, None, "test").sync.after.labels == {"stable": 2}
    assert load.requests > 100 and load.errors == [], load.errors[:3]


def test_a_configured_sandbox_server_validates_the_candidate_and_is_left_as_it_was(trained_digits, tmp_path,
                                                                                   mlflow_store, model_server) -> None:
    """A running TF Serving kept for validation (a staging instance) instead of a throwaway process."""
    from tasks.artifacts.infra_blessing import InfraBlessing

    sandbox_config = tmp_path / "sandbox" / "models.config"
    sandbox_config.parent.mkdir()
    sandbox_config.write_text("model_config_list {\n}\n")
    sandbox = start_server(tmp_path, f"--model_config_file={sandbox_config}")
    try:
        run, out = _until_infra(trained_digits, tmp_path, mlflow_store, model_server)
        config = tmp_path / "staging.yaml"
        config.write_text((tmp_path / "pipeline.yaml").read_text() + "serving: " + json.dumps({"sandbox": {
            "rest_url": sandbox.rest_url, "grpc_address": sandbox.grpc_target,
            "model_base_path": str(tmp_path / "sandbox" / "models"), "config_file": str(sandbox_config)}}) + "\n")
        staged = resolve(config, tmp_path, mlflow_store, endpoints(model_server), params={"variants": []},
                         run_id="staging")
        blessing = InfraBlessing.read(run_step("infra_validate", staged, inputs={
            k: out[k] for k in ("evaluation", "registered", "optimized", "model", "examples")})["infra_blessing"]).properties
        with RestClient(sandbox.rest_url) as rest:
            states = {s["state"] for s in rest.status("digits-infra-validation")}
    finally:
        sandbox.stop()
    assert blessing.blessed and blessing.server == sandbox.rest_url and blessing.errors == 0
    assert states == {"END"}, "unloaded after validation"
    assert "digits-infra-validation" not in sandbox_config.read_text(), "unloaded after validation"
    assert not (tmp_path / "sandbox" / "models" / "digits-infra-validation" / "1").exists()
