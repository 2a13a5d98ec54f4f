"""The two servable runtimes in-process: a SavedModel through prepared Session callables (with the feed checks
the C++ callable does not make), and a TFLite file through one LiteRT interpreter per request thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from serving.codec import ServingError
from tests.serving.conftest import half_plus_three_tflite


@pytest.fixture(scope="module")
def half_plus_two(test_models, tmp_path_factory):
    from serving.model_server.saved_model_servable import SavedModelServable

    return SavedModelServable(str(test_models.sources["half_plus_two"]))


@pytest.fixture(scope="module")
def two_inputs(test_models):
    from serving.model_server.saved_model_servable import SavedModelServable

    return SavedModelServable(str(test_models.sources["two_inputs"]))


def test_saved_model_signatures_exclude_the_init_op(half_plus_two):
    assert sorted(half_plus_two.signatures) == ["classify_x_to_y", "regress_x_to_y", "serving_default"]
    assert "__saved_model_init_op" in half_plus_two.signature_defs  # still listed in metadata, as before


def test_saved_model_runs_through_the_prepared_callable(half_plus_two):
    outputs = half_plus_two.run("serving_default", {"x": np.array([1.0, 2.0], np.float32)})
    np.testing.assert_allclose(outputs["y"], [2.5, 3.0])


def test_saved_model_runs_string_inputs_with_several_outputs(two_inputs):
    outputs = two_inputs.run(
        "serving_default", {"a": np.array([[1, 2]], np.float32), "b": np.array([b"x"], dtype=object)}
    )
    assert list(outputs["text_bytes"]) == [b"x!"]
    np.testing.assert_allclose(outputs["sum"], [3.0])
    assert two_inputs.run(
        "serving_default", {"a": np.array([[1, 2]], np.float32), "b": np.array([b"x"], dtype=object)}, ["sum"]
    ).keys() == {"sum"}


def test_saved_model_wrong_dtype_is_invalid_argument_not_a_silent_cast(half_plus_two):
    with pytest.raises(ServingError) as caught:
        half_plus_two.run("serving_default", {"x": np.array([1.0], np.float64)})
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message == "Expects arg for serving_default_x:0 to be float32 but float64 is provided"


def test_saved_model_wrong_shape_is_invalid_argument_before_any_kernel_runs(two_inputs):
    with pytest.raises(ServingError) as caught:
        two_inputs.run(
            "serving_default", {"a": np.zeros((1, 3), np.float32), "b": np.array([b"x"], dtype=object)}
        )
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message == (
        "Cannot feed value of shape (1, 3) for Tensor serving_default_a:0, which has shape (None, 2)"
    )


def test_saved_model_unknown_input_alias(half_plus_two):
    with pytest.raises(ServingError, match="input tensor alias not found in signature: z"):
        half_plus_two.run("serving_default", {"z": np.zeros(1, np.float32)})


@pytest.fixture(scope="module")
def tflite_version(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tflite") / "1"
    folder.mkdir()
    (folder / "model.tflite").write_bytes(half_plus_three_tflite())
    return folder


def test_tflite_builds_one_interpreter_per_request_thread(tflite_version):
    from serving.model_server.tflite_servable import TFLiteServable

    servable = TFLiteServable(str(tflite_version))
    assert servable.interpreter_count == 1  # the loading thread's, which read the signatures
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(3)

    def request(index: int) -> None:
        start.wait()
        for _ in range(20):
            results[index] = servable.run("serving_default", {"x": np.array([2.0 * index], np.float32)})["y"]

    threads = [threading.Thread(target=request, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert servable.interpreter_count == 4
    for index in range(3):
        np.testing.assert_allclose(results[index], [index + 3.0])
    servable.run("serving_default", {"x": np.array([1.0], np.float32)})  # the loading thread reuses its own
    assert servable.interpreter_count == 4


def test_tflite_signature_defs_describe_the_file(tflite_version):
    from serving.model_server.tflite_servable import TFLiteServable

    servable = TFLiteServable(str(tflite_version))
    assert list(servable.signatures) == ["serving_default"]
    assert list(servable.signature_defs["serving_default"].inputs) == ["x"]
