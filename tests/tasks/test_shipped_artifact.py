"""What is blessed is what ships (issue 18): evaluate scores optimize's version folder as the server runs it, one
digest travels from evaluate to the server, and every gate decision is made on the shipped artifact. One test
per decision, TFX style."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from common.digest import folder_digest
from serving.client import RestClient
from serving.deployer import read_config
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.optimized import OptimizedModel
from tasks.artifacts.pushed import PushedModel
from tasks.artifacts.verification import ServingVerification
from tasks.context import ServingEndpoints
from tasks.step_runner import StepRejected, StepSkipped, run_step, run_steps
from tasks.steps.verify import VerificationError
from tests.tasks.conftest import resolve

pytestmark = pytest.mark.slow
UNTIL_PUSH = ["optimize", "evaluate", "register", "infra_validate", "push"]


def endpoints(target) -> ServingEndpoints:
    return ServingEndpoints(rest_url=target.rest_url, grpc_address=target.grpc_address,
                            model_base_path=str(target.model_base_path), config_file=str(target.config_file))


def _run(trained: dict, root: Path, tracking: str, server=None, name: str | None = None, run_id: str | None = None,
         **params) -> str:
    """A run snapshot of the trained pipeline with a registered model of its own (a champion only if made)."""
    config = root / "pipeline.yaml"
    if not config.exists():
        root.mkdir(parents=True, exist_ok=True)
        config.write_text(trained["config"].read_text() + f"registry: {{model_name: {name or 'm-' + uuid.uuid4().hex[:8]}}}\n")
    return resolve(config, root, tracking, endpoints(server) if server else None, run_id=run_id,
                   params={"thresholds": {}, "change_thresholds": {}, **params})


@pytest.mark.parametrize(("pipeline", "variant"), [("digits", "dynamic_range"), ("churn", "int8")])
def test_the_shipped_tflite_file_is_what_evaluate_scores_and_what_the_server_answers_with(
        pipeline, variant, request, tmp_path, mlflow_store, model_server) -> None:
    """End to end, on images and on a tabular set with string features: a TFLite variant ships, the server (with
    --prefer_tflite_model, as every kiln server) answers every eval row with exactly evaluate's metric, and one
    digest runs from evaluate to the server."""
    from mlflow import MlflowClient

    from tasks.artifacts.examples import Examples
    from tasks.artifacts.model import Model
    from tasks.features import json_instances, load_arrays

    trained = request.getfixturevalue(f"trained_{pipeline}")
    run = _run(trained, tmp_path, mlflow_store, model_server, variants=[variant], budget=100)
    out = run_steps(run, [*UNTIL_PUSH, "verify", "promote"], available=trained)
    shipped = OptimizedModel.read(out["optimized"]).properties.shipped
    evaluation = ModelEvaluation.read(out["evaluation"]).properties
    assert (shipped.variant, shipped.format) == (variant, "tflite")
    assert evaluation.shipped_format == "tflite" and evaluation.artifact_sha256 == shipped.sha256
    assert set(evaluation.metrics_trained) == set(evaluation.metrics), "the float model's, beside it"

    pushed = PushedModel.read(out["pushed"]).properties
    served_folder = Path(pushed.version_dir)
    assert sorted(p.name for p in served_folder.iterdir()) == ["assets.extra", "model.tflite"], "TFLite only"
    assert folder_digest(served_folder) == shipped.sha256 == pushed.artifact_sha256
    assert ServingVerification.read(out["verification"]).properties.artifact_sha256 == shipped.sha256
    version = MlflowClient(mlflow_store).get_model_version(_registered_name(tmp_path), str(pushed.version))
    assert version.tags["kiln.artifact_sha256"] == shipped.sha256 and version.tags["kiln.served_format"] == "tflite"
    assert version.tags["kiln.shipped_bytes"] == str(shipped.bytes), "what an approval compares the champion's size with"

    preprocessing = Model.read(trained["model"]).preprocessing
    inputs, targets = load_arrays(Examples.read(trained["examples"]).split_files("eval"),
                                  preprocessing.features, preprocessing.label)
    with RestClient(model_server.rest_url) as client:
        answers = client.predict(pipeline, json_instances(inputs), label="stable").outputs
    served_accuracy = float(np.mean([a["class_id"] for a in answers] == targets))
    assert served_accuracy == evaluation.metrics["accuracy"], "REST answers give exactly evaluate's metric"


def _registered_name(root: Path) -> str:
    import yaml

    return yaml.safe_load((root / "pipeline.yaml").read_text())["registry"]["model_name"]


def test_a_variant_within_the_budget_that_fails_a_threshold_is_not_blessed_and_not_pushed(
        trained_digits, tmp_path, mlflow_store, model_server) -> None:
    """The float model would pass the threshold; the variant that ships does not, so nothing is pushed."""
    probe = _run(trained_digits, tmp_path / "probe", mlflow_store, variants=["pruned"], budget=100,
                 target_sparsity=0.95, fine_tune_epochs=1, run_id="probe")
    optimized = OptimizedModel.read(run_step("optimize", probe, inputs={
        k: trained_digits[k] for k in ("model", "examples")})["optimized"]).properties
    shipped, trained = optimized.selected_result.metric, optimized.baseline.metric
    assert optimized.shipped.variant == "pruned" and shipped < trained, "95 % sparse after one epoch: worse"
    threshold = round((shipped + trained) / 2, 4)

    run = _run(trained_digits, tmp_path, mlflow_store, model_server, variants=["pruned"], budget=100,
               target_sparsity=0.95, fine_tune_epochs=1, thresholds={"accuracy": threshold})
    out = run_steps(run, ["optimize", "evaluate", "register"], available=trained_digits)
    evaluation = ModelEvaluation.read(out["evaluation"]).properties
    assert evaluation.blessed is False and evaluation.metrics["accuracy"] < threshold
    assert evaluation.metrics_trained["accuracy"] >= threshold, "the float model's metric is context, not gated"
    assert evaluation.first_failure.startswith(f"eval accuracy {evaluation.metrics['accuracy']:.4f} does not meet")
    with pytest.raises(StepSkipped, match="^not promoted: eval accuracy"):
        run_step("infra_validate", run, inputs={k: out[k] for k in ("evaluation", "registered", "optimized", "model",
                                                                      "examples")})
    assert model_server.config_file.read_text().strip() == "model_config_list {\n}", "serving untouched"


def test_a_champion_served_as_tflite_is_scored_as_tflite(trained_digits, tmp_path, mlflow_store) -> None:
    """Like for like: the champion's metrics are those of its served TFLite file, the numbers its own evaluation
    recorded, not those of a float model."""
    from mlflow import MlflowClient

    from tasks.artifacts.registered import RegisteredModel
    from tasks.model_registry import promote

    name = f"m-{uuid.uuid4().hex[:8]}"
    first = _run(trained_digits, tmp_path / "champion", mlflow_store, name=name, variants=["pruned"], budget=100,
                 target_sparsity=0.95, fine_tune_epochs=1, run_id="champion")
    champion_out = run_steps(first, ["optimize", "evaluate", "register"], available=trained_digits)
    champion_eval = ModelEvaluation.read(champion_out["evaluation"]).properties
    assert champion_eval.shipped_format == "tflite"
    assert champion_eval.metrics != champion_eval.metrics_trained, "95 % sparse: not the float model's answers"
    version = RegisteredModel.read(champion_out["registered"]).properties.version
    promote(MlflowClient(mlflow_store), name, version, "test champion", by="test")

    second = _run(trained_digits, tmp_path / "candidate", mlflow_store, name=name, variants=[], run_id="candidate",
                  change_thresholds={"accuracy": {"absolute": -1.0}})
    evaluation = ModelEvaluation.read(run_steps(second, ["optimize", "evaluate"],
                                                available=trained_digits)["evaluation"]).properties
    assert evaluation.shipped_format == "saved_model" and evaluation.champion_version == version
    assert evaluation.champion_metrics == champion_eval.metrics, "scored as served: its TFLite file, in LiteRT"
    assert f"champion v{version} (tflite)" in evaluation.checks[0].reason


def test_a_folder_changed_after_it_was_blessed_is_refused_at_push_and_nothing_changes(
        trained_digits, tmp_path, mlflow_store, model_server) -> None:
    from mlflow import MlflowClient

    from tasks.model_registry import aliases

    run = _run(trained_digits, tmp_path, mlflow_store, model_server, variants=[])
    out = run_steps(run, ["optimize", "evaluate", "register", "infra_validate"], available=trained_digits)
    folder = Path(OptimizedModel.read(out["optimized"]).version_folder)
    warmup = folder / "assets.extra" / "tf_serving_warmup_requests"
    warmup.write_bytes(warmup.read_bytes() + b"\0")  # one byte more than what evaluate scored
    with pytest.raises(StepRejected, match=r"^DigestMismatch: push of digits v1 refused: .* has digest [0-9a-f]{12}, "
                                           r"evaluate blessed [0-9a-f]{12}; nothing was changed$"):
        run_step("push", run, inputs={k: out[k] for k in ("evaluation", "infra_blessing", "registered", "optimized")})
    assert model_server.config_file.read_text().strip() == "model_config_list {\n}"
    assert not (Path(model_server.model_base_path) / "digits").exists(), "nothing staged"
    assert aliases(MlflowClient(mlflow_store), _registered_name(tmp_path)) == {}, "no challenger"


def test_a_server_folder_that_is_not_the_blessed_one_fails_verify_and_is_withdrawn(
        trained_digits, tmp_path, mlflow_store, model_server) -> None:
    run = _run(trained_digits, tmp_path, mlflow_store, model_server, variants=[])
    out = run_steps(run, UNTIL_PUSH, available=trained_digits)
    served = Path(PushedModel.read(out["pushed"]).properties.version_dir)
    (served / "assets.extra" / "notes.txt").write_text("copied in by hand")
    with pytest.raises(VerificationError, match=r"version 1 is not the blessed artifact: .*withdrawn from serving"):
        run_step("verify", run, inputs={k: out[k] for k in ("pushed", "evaluation", "model", "examples")})
    assert read_config(model_server.config_file).model_config_list.config == [], "the canary is withdrawn"


def test_a_canary_that_answers_unlike_its_folder_is_withdrawn(trained_digits, tmp_path, mlflow_store, model_server,
                                                              monkeypatch) -> None:
    run = _run(trained_digits, tmp_path, mlflow_store, model_server, variants=[])
    out = run_steps(run, UNTIL_PUSH, available=trained_digits)
    from tasks.steps import verify

    real = verify.predict_served
    monkeypatch.setattr(verify, "predict_served", lambda folder, inputs: {
        k: (v + 0.5 if v.dtype.kind == "f" else v) for k, v in real(folder, inputs).items()})
    with pytest.raises(VerificationError, match=r"version 1 answers differently from the shipped model \(max relative "
                                                r"output difference .* > serving.tolerance"):
        run_step("verify", run, inputs={k: out[k] for k in ("pushed", "evaluation", "model", "examples")})
    assert read_config(model_server.config_file).model_config_list.config == []


def test_serving_format_saved_model_ships_no_tflite_file(trained_digits, tmp_path, mlflow_store, model_server) -> None:
    run = _run(trained_digits, tmp_path, mlflow_store, model_server, variants=["dynamic_range"], budget=100,
               serving_format="saved_model")
    out = run_steps(run, [*UNTIL_PUSH, "verify", "promote"], available=trained_digits)
    optimized = OptimizedModel.read(out["optimized"]).properties
    assert optimized.selected == "dynamic_range" and optimized.shipped.format == "saved_model"
    served = Path(PushedModel.read(out["pushed"]).properties.version_dir)
    assert (served / "saved_model.pb").is_file() and not (served / "model.tflite").exists()
    with RestClient(model_server.rest_url) as client:
        assert client.label_version("digits", "stable") == 1


def test_serving_format_tflite_of_a_model_that_does_not_convert_is_refused_at_optimize(
        trained_digits, tmp_path, mlflow_store, monkeypatch) -> None:
    from tasks.compression import tflite

    def no_conversion(*args, **kwargs):
        raise tflite.ConversionSkipped("layer 'custom' uses ops outside the TFLite builtins (Svd)")

    monkeypatch.setattr(tflite, "convert", no_conversion)
    run = _run(trained_digits, tmp_path, mlflow_store, variants=["dynamic_range"], serving_format="tflite")
    with pytest.raises(StepRejected, match=r"^ServingFormatError: serving.format tflite: the model does not convert "
                                           r"to TFLite \(layer 'custom' uses ops outside the TFLite builtins \(Svd\)\); "
                                           r"use serving.format saved_model or auto$"):
        run_step("optimize", run, inputs={k: trained_digits[k] for k in ("model", "examples")})


def test_an_unknown_serving_format_is_refused_when_the_run_is_resolved(trained_digits, tmp_path) -> None:
    from tasks.config import ConfigError

    config = tmp_path / "p.yaml"
    config.write_text(trained_digits["config"].read_text() + "serving: {format: onnx}\n")
    with pytest.raises(ConfigError, match=r"field 'serving.format': Input should be 'auto', 'saved_model' or "
                                          r"'tflite'$"):
        resolve(config, tmp_path)
