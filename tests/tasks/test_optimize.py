"""Optimize: every variant built and measured with LiteRT against the float32 baseline, sparsity read
from the file, the smallest variant within the budget selected; what cannot be built is skipped with
the reason, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.digest import folder_bytes, folder_digest
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import Model
from tasks.artifacts.optimized import OptimizedModel
from tasks.compression import tflite
from tasks.features import load_arrays
from tasks.models.export import predict
from tasks.step_runner import run_step, run_steps
from tests.tasks.conftest import UNTIL_TRAIN, house_pipeline, resolve
from tests.tasks.custom_bodies import CUSTOM_BODIES

FAST = "optimize: {latency_runs: 20, representative_examples: 50, %s}\n"


def _optimize(trained: dict, root: Path, tracking: str, settings: str = "") -> OptimizedModel:
    config = root / "pipeline.yaml"
    root.mkdir(parents=True, exist_ok=True)
    config.write_text(trained["config"].read_text() + FAST % settings)
    run = resolve(config, root, tracking)
    uri = run_step("optimize", run, inputs={"model": trained["model"], "examples": trained["examples"]})["optimized"]
    return OptimizedModel.read(uri)


@pytest.fixture(scope="module")
def digits_variants(trained_digits, tmp_path_factory, mlflow_store) -> OptimizedModel:
    """Every variant of the shared tiny digits CNN (pruning to 80 %, two fine-tune epochs)."""
    return _optimize(trained_digits, tmp_path_factory.mktemp("variants"), mlflow_store, "fine_tune_epochs: 2")


def test_every_variant_is_built_and_measured_against_the_float32_baseline(digits_variants) -> None:
    props = digits_variants.properties
    assert props.metric_name == "accuracy" and props.budget == 1.0 and props.budget_unit == "accuracy points"
    assert [v.name for v in props.variants] == ["dynamic_range", "float16", "int8", "qat_int8", "pruned",
                                                "pruned_int8", "pruned_qat_int8"]
    for result in [props.baseline, *props.variants]:
        assert result.skipped_reason is None, (result.name, result.skipped_reason)
        assert 0 < result.metric <= 1 and 0 < result.gzip_bytes <= result.bytes
        assert 0 < result.latency_ms_p50 <= result.latency_ms_p99
        assert Path(digits_variants.path("variants", f"{result.name}.tflite")).stat().st_size == result.bytes
    by_name = {v.name: v for v in props.variants}
    assert by_name["int8"].bytes * 3 < props.baseline.bytes, "int8 weights: about 4x smaller than float32"
    assert by_name["float16"].bytes * 1.8 < props.baseline.bytes
    assert by_name["pruned_int8"].gzip_bytes * 5 < props.baseline.gzip_bytes


def test_pruning_reaches_the_target_sparsity_in_the_file(digits_variants) -> None:
    for name in ("pruned", "pruned_int8", "pruned_qat_int8"):
        model = Path(digits_variants.path("variants", f"{name}.tflite")).read_bytes()
        overall, layers = tflite.weight_sparsity(model)  # read from the file itself, not assumed
        pruned = {layer: share for layer, share in layers.items() if "probabilities" not in layer}
        assert pruned and all(abs(share - 0.8) <= 0.02 for share in pruned.values()), (name, layers)
        assert abs(overall - 0.8) <= 0.02
    assert digits_variants.properties.baseline.sparsity == 0.0


def test_the_smallest_variant_within_the_budget_is_selected_and_shipped(digits_variants) -> None:
    props = digits_variants.properties
    eligible = [v for v in [props.baseline, *props.variants] if v.within_budget]
    assert props.selected == min(eligible, key=lambda v: v.gzip_bytes).name
    assert all(v.within_budget == ((props.baseline.metric - v.metric) * 100 <= 1.0) for v in props.variants)
    assert Path(digits_variants.tflite_path).read_bytes() == \
        Path(digits_variants.path("variants", f"{props.selected}.tflite")).read_bytes()
    source = {"pruned": "pruned", "pruned_int8": "pruned", "pruned_qat_int8": "pruned_qat", "qat_int8": "qat"}
    assert props.served_saved_model == props.shipped.source == source.get(props.selected, "trained")
    # serving.format auto: a selected variant ships as its TFLite file, alone with its warmup requests.
    shipped = Path(digits_variants.version_folder)
    assert props.selected != "baseline" and props.shipped.format == "tflite"
    assert sorted(p.relative_to(shipped).as_posix() for p in shipped.rglob("*") if p.is_file()) == \
        ["assets.extra/tf_serving_warmup_requests", "model.tflite"]
    assert (shipped / "model.tflite").read_bytes() == Path(digits_variants.tflite_path).read_bytes()
    assert props.shipped.sha256 == folder_digest(shipped) and props.shipped.bytes == folder_bytes(shipped)
    report = json.loads(Path(digits_variants.path("report.json")).read_text())
    assert report["selected"] == props.selected and len(report["variants"]) == 7
    assert "(selected)" in Path(digits_variants.path("report.md")).read_text()
    assert Path(digits_variants.path("size_vs_metric.png")).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_budget_of_zero_ships_the_trained_saved_model(trained_digits, tmp_path, mlflow_store) -> None:
    optimized = _optimize(trained_digits, tmp_path, mlflow_store, "budget: 0, variants: [dynamic_range, int8]")
    props = optimized.properties
    assert props.selected == "baseline" and props.served_saved_model == "trained"
    assert (props.shipped.variant, props.shipped.format) == ("baseline", "saved_model")
    shipped = Path(optimized.version_folder)
    trained = Path(Model.read(trained_digits["model"]).saved_model)
    assert (shipped / "saved_model.pb").read_bytes() == (trained / "saved_model.pb").read_bytes()
    assert not (shipped / "model.tflite").exists()


def test_serving_format_tflite_ships_the_float32_file_when_nothing_is_selected(trained_digits, tmp_path,
                                                                              mlflow_store) -> None:
    config = tmp_path / "pipeline.yaml"
    tmp_path.mkdir(exist_ok=True)
    config.write_text(trained_digits["config"].read_text() + FAST % "variants: []" + "serving: {format: tflite}\n")
    uri = run_step("optimize", resolve(config, tmp_path, mlflow_store),
                   inputs={"model": trained_digits["model"], "examples": trained_digits["examples"]})["optimized"]
    optimized = OptimizedModel.read(uri)
    assert (optimized.properties.shipped.variant, optimized.properties.shipped.format) == ("baseline", "tflite")
    assert Path(optimized.version_folder, "model.tflite").read_bytes() == \
        Path(optimized.path("variants", "baseline.tflite")).read_bytes()


@pytest.mark.parametrize("integer_io", [False, True])
def test_each_post_training_mode_converts_and_runs_for_a_regression(house_csv, tmp_path, mlflow_store,
                                                                    integer_io) -> None:
    trained = {"config": house_pipeline(tmp_path, house_csv, train={"epochs": 5})}  # a string column too
    trained |= run_steps(resolve(trained["config"], tmp_path, mlflow_store, run_id="numeric"), UNTIL_TRAIN)
    settings = f"variants: [dynamic_range, float16, int8], integer_io: {str(integer_io).lower()}"
    props = _optimize(trained, tmp_path / "opt", mlflow_store, settings).properties
    assert props.metric_name == "rmse" and props.budget == 0.05 and props.budget_unit == "relative RMSE increase"
    for result in props.variants:
        assert result.skipped_reason is None and result.metric > 0, result
        assert abs(result.metric - props.baseline.metric) / props.baseline.metric < 0.1, result


@pytest.fixture(scope="module")
def churn_variants(trained_churn, tmp_path_factory, mlflow_store) -> OptimizedModel:
    """Every variant of the churn model: string lookups (one with missing values), a boolean and numbers."""
    return _optimize(trained_churn, tmp_path_factory.mktemp("churn-variants"), mlflow_store, "fine_tune_epochs: 2")


def test_a_model_with_string_lookups_builds_every_variant(churn_variants) -> None:
    props = churn_variants.properties
    assert [v.name for v in props.variants] == ["dynamic_range", "float16", "int8", "qat_int8", "pruned",
                                                "pruned_int8", "pruned_qat_int8"]
    for result in [props.baseline, *props.variants]:
        assert result.skipped_reason is None, (result.name, result.skipped_reason)
        assert 0.5 < result.metric <= 1 and 0 < result.gzip_bytes <= result.bytes
        assert Path(churn_variants.path("variants", f"{result.name}.tflite")).stat().st_size == result.bytes
    by_name = {v.name: v for v in props.variants}
    for name in ("dynamic_range", "float16"):  # int8 and pruning may cost a point of this small model's accuracy
        assert by_name[name].within_budget, by_name[name]
    # serving.format auto: the selected variant ships, as a TFLite file.
    assert props.selected != "baseline" and props.shipped.format == "tflite"
    assert Path(churn_variants.version_folder, "model.tflite").read_bytes() == \
        Path(churn_variants.path("variants", f"{props.selected}.tflite")).read_bytes()


def test_the_string_model_in_litert_answers_like_its_saved_model(churn_variants, trained_churn) -> None:
    trained = Model.read(trained_churn["model"])
    inputs, _ = load_arrays(Examples.read(trained_churn["examples"]).split_files("eval"),
                            trained.preprocessing.features, trained.preprocessing.label)
    assert inputs["plan"].dtype == object and inputs["paperless"].dtype == bool
    saved = predict(trained.saved_model, inputs)
    lite = tflite.Runner(Path(churn_variants.path("variants", "baseline.tflite")).read_bytes())(inputs)
    assert np.array_equal(saved["class_id"], lite["class_id"])
    assert np.allclose(saved["probabilities"], lite["probabilities"], atol=1e-5)
    assert list(lite["class"]) == list(saved["class"])


UNSUPPORTED_BODY = '''
import numpy as np
import tf_keras as keras


class Scale(keras.layers.Layer):
    """A custom layer whose constructor takes an array and that has no get_config: Keras cannot record it
    in a config, so the model cannot be rebuilt from one, and tfmot cannot clone it to wrap its layers."""

    def __init__(self, start, **kwargs):
        super().__init__(**kwargs)
        self.start = np.asarray(start, np.float32)

    def build(self, shape):
        self.factor = self.add_weight(name="factor", shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * self.factor * self.start


def build(inputs, hparams):
    return keras.layers.Dense(16, activation="relu")(Scale(np.ones(1, np.float32), name="scale")(inputs))
'''


def test_a_layer_tfmot_cannot_wrap_skips_its_variants_with_the_reason(house_csv, tmp_path, mlflow_store) -> None:
    (tmp_path / "body.py").write_text(UNSUPPORTED_BODY)
    trained = {"config": house_pipeline(tmp_path, house_csv, train={"epochs": 2, "model": f"{tmp_path / 'body.py'}:build"})}
    trained |= run_steps(resolve(trained["config"], tmp_path, mlflow_store, run_id="custom"), UNTIL_TRAIN)
    props = _optimize(trained, tmp_path / "opt", mlflow_store, "variants: [dynamic_range, qat_int8, pruned]").properties
    by_name = {v.name: v for v in props.variants}
    assert by_name["dynamic_range"].skipped_reason is None, "post-training variants need no tfmot"
    for name in ("qat_int8", "pruned"):
        assert by_name[name].skipped_reason.startswith("the model cannot be cloned for tfmot"), by_name[name]


def test_a_custom_layer_outside_the_builtins_skips_every_variant_with_the_layer_named(house_csv, tmp_path,
                                                                                    mlflow_store) -> None:
    (tmp_path / "bodies.py").write_text(CUSTOM_BODIES)
    trained = {"config": house_pipeline(tmp_path, house_csv, train={"epochs": 1, "model": f"{tmp_path / 'bodies.py'}:fft"})}
    trained |= run_steps(resolve(trained["config"], tmp_path, mlflow_store, run_id="fft"), UNTIL_TRAIN)
    optimized = _optimize(trained, tmp_path / "opt", mlflow_store, "variants: [dynamic_range, pruned]")
    props = optimized.properties
    why = "layer 'fft_block' uses ops outside the TFLite builtins (Complex, FFT); they need Select TF ops"
    assert props.baseline.skipped_reason.startswith(f"TFLite conversion (float32) failed: {why}")
    assert "\n" not in props.baseline.skipped_reason
    for variant in props.variants:
        assert variant.skipped_reason.startswith("the float32 baseline does not convert") and why in variant.skipped_reason
    assert props.selected == "baseline" and optimized.tflite_path is None
    assert props.shipped.format == "saved_model", "serving.format auto ships what converts: the SavedModel"
