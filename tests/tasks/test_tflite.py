"""TFLite conversion with the builtins only (no Select TF ops, LiteRT without a Flex delegate): the
preprocessing of every feature kind, and a model mixing them all, converts in each post-training mode and
answers as its SavedModel does; tfmot's pruned and quantization-aware copies keep the preprocessing and
convert too; a custom layer outside the builtins is named in the skip reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.compression import tflite, tuning
from tasks.features import MISSING_INT, FeatureSpec, LabelSpec, Preprocessing
from tasks.models.assemble import build_model, compile_model
from tasks.models.export import CLASS_ID, export_saved_model, predict
from tests.tasks.custom_bodies import CUSTOM_BODIES

LABEL = LabelSpec(column="churned", value_type="string", task="classification", classes=["no", "yes"])
NAN = float("nan")

# Per kind: the feature, values a model sees, and edge values (missing, exactly on a bucket boundary) that
# full-integer quantization of a float input cannot keep (NaN has no int8 value, a boundary moves by a step).
KINDS = {
    "string": (FeatureSpec(name="plan", kind="string", columns=["plan"], column_types=["string"],
                           vocabulary=["basic", "pro", "Zürich", ""]),
               [b"basic", b"pro", "Zürich".encode(), b"", b"premium", b"[UNK]"], []),
    "integer": (FeatureSpec(name="code", kind="integer", columns=["code"], column_types=["int"],
                            vocabulary=[0, 1, 2, 3]),
                [0, 1, 2, 3, 4, -1, MISSING_INT, 2**32], []),
    "discretized": (FeatureSpec(name="age", kind="numeric", columns=["age"], column_types=["float"],
                                bin_boundaries=[0.0, 1.0, 1.0, 2.5]),
                    [-1.0, 0.25, 0.5, 1.5, 2.0, 3.0, 4.0], [NAN, 0.0, 1.0, 2.5]),
    "normalized": (FeatureSpec(name="monthly", kind="numeric", columns=["monthly"], column_types=["float"],
                               mean=[1.0], variance=[4.0]),
                   [-3.0, -1.0, 0.0, 0.5, 2.0, 5.0], [NAN]),
    "boolean": (FeatureSpec(name="paperless", kind="boolean", columns=["paperless"], column_types=["bool"]),
                [True, False], []),
}
DTYPES = {"string": object, "integer": np.int64, "boolean": bool}


def _column(kind: str, values: list, rows: int) -> np.ndarray:
    """`rows` values cycling through `values`, typed as load_arrays gives them (strings: object arrays)."""
    return np.array([values[i % len(values)] for i in range(rows)], dtype=DTYPES.get(kind, np.float32))


def _inputs(kinds: list[str], with_edges: bool, rows: int = 64) -> dict[str, np.ndarray]:
    """Every kind's values, each column cycling at its own pace so rows mix them."""
    return {KINDS[k][0].name: _column(k, KINDS[k][1] + (KINDS[k][2] if with_edges else []), rows) for k in kinds}


def _targets(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """A class the model can learn from the features: the parity of their distinct values' order."""
    codes = [np.unique([repr(v) for v in values], return_inverse=True)[1] for values in inputs.values()]
    return np.sum(codes, axis=0) % 2


def _saved_model(kinds: list[str], folder: Path) -> tuple[Path, object, Preprocessing]:
    """A small model over `kinds`, trained until its answers are decisive, exported with kiln's signature."""
    import tf_keras as keras

    keras.utils.set_random_seed(1)
    preprocessing = Preprocessing(features=[KINDS[k][0] for k in kinds], label=LABEL)
    model = build_model(preprocessing, "mlp", {"hidden_units": [16], "dropout": 0})
    compile_model(model, LABEL, learning_rate=0.05)
    inputs = _inputs(kinds, with_edges=True)
    model.fit(inputs, _targets(inputs), epochs=40, batch_size=64, verbose=0)
    return export_saved_model(model, preprocessing, folder), model, preprocessing


def _one_at_a_time(inputs: dict[str, np.ndarray]):
    def examples():
        for index in range(len(next(iter(inputs.values())))):
            yield {name: values[index:index + 1] for name, values in inputs.items()}

    return examples


def _assert_answers_alike(saved_model: Path, model: bytes, inputs: dict, tolerance: float, same_class: bool) -> None:
    saved, lite = predict(saved_model, inputs), tflite.Runner(model)(inputs)
    assert np.max(np.abs(saved["probabilities"] - lite["probabilities"])) <= tolerance
    if same_class:
        assert np.array_equal(saved[CLASS_ID], lite[CLASS_ID])
        assert list(saved["class"]) == list(lite["class"])


def _assert_converts_like_the_saved_model(saved_model: Path, kinds: list[str]) -> None:
    everything, typical = _inputs(kinds, with_edges=True), _inputs(kinds, with_edges=False)
    _assert_answers_alike(saved_model, tflite.convert(saved_model, "float32"), everything, 1e-5, True)
    _assert_answers_alike(saved_model, tflite.convert(saved_model, "dynamic_range"), everything, 1e-5, True)
    _assert_answers_alike(saved_model, tflite.convert(saved_model, "float16"), everything, 5e-3, False)
    # Calibrated on the examples as optimize gives them: strings in object arrays.
    int8 = tflite.convert(saved_model, "int8", _one_at_a_time(everything))
    _assert_answers_alike(saved_model, int8, typical, 0.05, False)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_feature_kind_converts_to_builtins_and_answers_like_the_saved_model(kind, tmp_path) -> None:
    saved_model, _, _ = _saved_model([kind], tmp_path / "saved")
    _assert_converts_like_the_saved_model(saved_model, [kind])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, object, Preprocessing]:
    return _saved_model(sorted(KINDS), tmp_path_factory.mktemp("mixed") / "saved")


def test_a_model_mixing_every_kind_converts_and_answers_like_the_saved_model(mixed) -> None:
    saved_model, _, _ = mixed
    _assert_converts_like_the_saved_model(saved_model, sorted(KINDS))
    typical = _inputs(sorted(KINDS), with_edges=False)
    int8_io = tflite.convert(saved_model, "int8", _one_at_a_time(typical), integer_io=True)
    _assert_answers_alike(saved_model, int8_io, typical, 0.05, False)


def test_int8_calibration_sees_strings_given_as_object_arrays(tmp_path) -> None:
    """tf.data gives strings as object arrays, which TFLite's calibrator reads as no vocabulary value: every
    example would calibrate as out of vocabulary, and the int8 range after the lookup would be too narrow."""
    import tensorflow as tf

    from tasks.models.one_hot import VocabularyOneHot

    lookup = VocabularyOneHot(["a", "b", "c", "d"])
    score = tf.constant([10.0, 20.0, 30.0, 40.0, 50.0])  # out of vocabulary, then each value

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="plan")])
    def serve(plan):
        return {"score": tf.reduce_sum(lookup(tf.reshape(plan, [-1, 1])) * score, axis=-1)}

    tf.saved_model.save(tf.Module(), str(tmp_path / "saved"), signatures={"serving_default": serve})
    plans = np.array([b"a", b"b", b"c", b"d", b"z"], dtype=object)
    int8 = tflite.convert(tmp_path / "saved", "int8", _one_at_a_time({"plan": plans}))
    # Without the conversion to bytes every score would read 10; int8 rounding moves them by about 1.
    assert np.allclose(tflite.Runner(int8)({"plan": plans})["score"], [20, 30, 40, 50, 10], atol=2)


@pytest.mark.slow
def test_tfmot_copies_keep_the_preprocessing_and_convert(mixed, tmp_path) -> None:
    _, trained, preprocessing = mixed
    inputs, typical = _inputs(sorted(KINDS), with_edges=True), _inputs(sorted(KINDS), with_edges=False)
    targets = _targets(inputs)

    def fine_tuned(model, callbacks: list | None = None):
        compile_model(model, LABEL, learning_rate=0.01)
        model.fit(inputs, targets, epochs=2, batch_size=16, callbacks=callbacks or [], verbose=0)
        return model

    pruned = tuning.strip(fine_tuned(tuning.prune(trained, 0.5, 8, []), tuning.pruning_callbacks()))
    assert {"plan_lookup", "code_lookup", "age_one_hot"} <= {layer.name for layer in pruned.layers}
    qat = fine_tuned(tuning.quantize_aware(trained))
    pruned_qat = fine_tuned(tuning.quantize_aware(pruned, preserve_sparsity=True))
    for name, model, conversion in [("pruned", pruned, "float32"), ("qat", qat, "quantized"),
                                    ("pruned_qat", pruned_qat, "quantized")]:
        saved_model = export_saved_model(model, preprocessing, tmp_path / name)
        exact = conversion == "float32"
        _assert_answers_alike(saved_model, tflite.convert(saved_model, conversion), inputs if exact else typical,
                              1e-5 if exact else 0.05, exact)


@pytest.mark.parametrize("function, why", [
    ("fft", "layer 'fft_block' uses ops outside the TFLite builtins (Complex, FFT)"),
    ("two", "layers 'fft_block' (Complex, FFT), 'running_product' (Cumprod) use ops outside the TFLite builtins"),
])
def test_a_custom_layer_outside_the_builtins_is_named(tmp_path, function, why) -> None:
    body = tmp_path / "body.py"
    body.write_text(CUSTOM_BODIES)
    preprocessing = Preprocessing(features=[KINDS["normalized"][0], KINDS["string"][0]], label=LABEL)
    model = build_model(preprocessing, f"{body}:{function}", {})
    saved_model = export_saved_model(model, preprocessing, tmp_path / "saved")
    with pytest.raises(tflite.ConversionSkipped) as skipped:
        tflite.convert(saved_model, "float32")
    assert str(skipped.value) == f"TFLite conversion (float32) failed: {why}; they need Select TF ops, which " \
                                 f"LiteRT's interpreter here does not include"


def test_another_converter_error_is_its_first_line_with_the_layer_the_converter_placed_it_in() -> None:
    from types import SimpleNamespace as Fake  # the shape of ConverterError.errors: op, message, call sites

    error = Fake(operator=Fake(name="tfl.one_hot"),
                 error_message="'tfl.one_hot' op operand #2 must be tensor of 32-bit float\nsee current operation",
                 location=Fake(call=[Fake(name="kiln_model/age_one_hot/Cast@__inference_serve_41"),
                                     Fake(name="StatefulPartitionedCall")]))
    converter_error = Exception("Could not translate MLIR to FlatBuffer.<unknown>:0: error: loc(callsite(...")
    converter_error.errors = [error]
    assert tflite.why_not_converted(converter_error) == \
        "layer 'age_one_hot': 'tfl.one_hot' op operand #2 must be tensor of 32-bit float"
    assert tflite.why_not_converted(ValueError("no representative data\nmore")) == "no representative data"
