"""The user-model contract: finding the function `train.model` names, calling it on Keras inputs and
checking what it returns, each failure a one-line `ModelContractError`; and the built-in bodies."""

from __future__ import annotations

import sys
import textwrap
import uuid

import fsspec
import pytest

from tasks.models import builtin, contract
from tasks.models.contract import (
    BUILTINS,
    CHECK_WIDTH,
    ModelContractError,
    build_body,
    check_model_function,
    load_model_function,
)

keras = pytest.importorskip("tf_keras")


def model_file(tmp_path, body: str, name: str = "model.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def contract_error(ref: str, *args) -> str:
    """The one-line message of the ModelContractError that loading (or building with args) raises."""
    with pytest.raises(ModelContractError) as exc:
        if args:
            build_body(ref, *args)
        else:
            load_model_function(ref)
    message = str(exc.value)
    assert "\n" not in message
    assert repr(ref) in message
    return message


def inputs(width: int = CHECK_WIDTH):
    return keras.Input(shape=(width,), dtype="float32", name="preprocessed")


BODIES = """
    import tf_keras as keras

    def dense(inputs, hparams):
        return keras.layers.Dense(hparams.get("units", 3))(inputs)

    def layer(inputs, hparams):
        return keras.layers.Dense(5)

    def model(inputs, hparams):
        return keras.Sequential([keras.layers.Dense(2)])

    def none(inputs, hparams):
        return None

    def text(inputs, hparams):
        return "dense"

    def rank3(inputs, hparams):
        return keras.layers.Reshape((4, 4))(inputs)

    def lookup(inputs, hparams):
        return hparams["missing_key"]

    def multiline(inputs, hparams):
        raise ValueError("first line\\nsecond line")

    NOT_A_FUNCTION = 3
"""


@pytest.fixture
def bodies(tmp_path):
    return str(model_file(tmp_path, BODIES, "bodies.py"))


# --- load_model_function -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_built_ins(name):
    assert load_model_function(name) is getattr(builtin, name)


def test_a_package_module_function():
    assert load_model_function("tasks.models.builtin:mlp") is builtin.mlp


def test_a_file_function(tmp_path):
    path = model_file(tmp_path, "def build(inputs, hparams):\n    return inputs\n")
    function = load_model_function(f"{path}:build")
    assert function.__name__ == "build" and function(1, {}) == 1


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_a_file_url_function(tmp_path, scheme):
    body = "def build(inputs, hparams):\n    return 'ok'\n"
    if scheme == "file":
        url = f"file://{model_file(tmp_path, body)}"
    else:
        memory = fsspec.filesystem("memory")
        url = f"memory://kiln-test-{uuid.uuid4().hex[:8]}/model.py"
        memory.pipe(url, body.encode())
    assert load_model_function(f"{url}:build")(None, {}) == "ok"


@pytest.mark.parametrize("ref", ["mlp2", "", ":build", "tasks.models.builtin:", "model.py", "tasks.models.builtin"])
def test_a_reference_of_the_wrong_form(ref):
    message = contract_error(ref)
    assert "expected a built-in (mlp, cnn), path/to/file.py:function or package.module:function" in message


def test_a_file_that_does_not_exist(tmp_path):
    path = tmp_path / "absent.py"
    assert f"file not found: {path}" in contract_error(f"{path}:build")


@pytest.mark.parametrize("body, how", [
    ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
    ("def build(inputs, hparams)\n    return inputs\n", "SyntaxError"),
    ("import kiln_no_such_package_xyz\n", "ModuleNotFoundError: No module named 'kiln_no_such_package_xyz'"),
    ("raise ValueError('first\\nsecond')\n", "ValueError: first"),
])
def test_a_file_that_raises_on_import_says_how(tmp_path, body, how):
    path = model_file(tmp_path, body)
    message = contract_error(f"{path}:build")
    assert f"importing {path} failed" in message and how in message


def test_a_file_without_the_function(bodies):
    assert "has no function 'build'" in contract_error(f"{bodies}:build")


def test_a_file_attribute_that_is_not_callable(bodies):
    message = contract_error(f"{bodies}:NOT_A_FUNCTION")
    assert "'NOT_A_FUNCTION' in" in message and "is not a function" in message


def test_a_module_without_the_function():
    assert "has no function 'transformer'" in contract_error("tasks.models.builtin:transformer")


def test_a_module_attribute_that_is_not_callable():
    assert "is not a function" in contract_error("tasks.models.contract:CHECK_WIDTH")


def test_a_module_that_cannot_be_imported():
    message = contract_error("kiln_no_such_package_xyz.models:build")
    assert "cannot import kiln_no_such_package_xyz.models" in message


def test_a_module_that_raises_on_import_says_how(tmp_path, monkeypatch):
    name = f"kiln_broken_{uuid.uuid4().hex[:8]}"
    model_file(tmp_path, "raise RuntimeError('no GPU here')\n", f"{name}.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        message = contract_error(f"{name}:build")
    finally:
        sys.modules.pop(name, None)
    assert "RuntimeError: no GPU here" in message


# --- build_body ----------------------------------------------------------------------------------


def test_a_body_returning_a_tensor(bodies):
    output = build_body(f"{bodies}:dense", inputs(), {"units": 7})
    assert keras.backend.is_keras_tensor(output)
    assert tuple(output.shape) == (None, 7)


def test_the_hparams_are_a_copy(tmp_path):
    path = model_file(tmp_path, """
        import tf_keras as keras

        def build(inputs, hparams):
            hparams["units"] = 99
            return keras.layers.Dense(2)(inputs)
    """)
    hparams = {"units": 1}
    build_body(f"{path}:build", inputs(), hparams)
    assert hparams == {"units": 1}


@pytest.mark.parametrize("function, width", [("layer", 5), ("model", 2)])
def test_a_body_returning_a_layer_or_model_is_applied(bodies, function, width):
    output = build_body(f"{bodies}:{function}", inputs(), {})
    assert keras.backend.is_keras_tensor(output)
    assert tuple(output.shape) == (None, width)


@pytest.mark.parametrize("function, kind", [("none", "NoneType"), ("text", "str")])
def test_a_body_returning_something_else(bodies, function, kind):
    message = contract_error(f"{bodies}:{function}", inputs(), {})
    assert f"returned {kind}; it must return a Keras tensor" in message


def test_a_body_of_the_wrong_rank_names_the_shape(bodies):
    message = contract_error(f"{bodies}:rank3", inputs(16), {})
    assert "returned a tensor of shape (batch, 4, 4)" in message
    assert "(batch, units)" in message


def test_a_body_that_raises_names_the_exception_type(bodies):
    message = contract_error(f"{bodies}:lookup", inputs(), {})
    assert "raised KeyError: 'missing_key'" in message


def test_a_body_raising_a_multiline_message_is_one_line(bodies):
    assert "raised ValueError: first line" in contract_error(f"{bodies}:multiline", inputs(), {})


def test_check_model_function_builds_on_stand_in_inputs(bodies):
    check_model_function(f"{bodies}:dense", {})
    with pytest.raises(ModelContractError, match=r"shape \(batch, 4, 4\)"):
        check_model_function(f"{bodies}:rank3", {})


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_check_model_function_skips_built_ins(monkeypatch, name):
    def fail(*args, **kwargs):
        raise AssertionError("built-ins are not built before a run")

    monkeypatch.setattr(contract, "build_body", fail)
    check_model_function(name, {"image_shape": [3, 3, 3], "hidden_units": "not a list"})


# --- built-in bodies -----------------------------------------------------------------------------


def test_cnn_refuses_an_image_shape_of_another_size():
    with pytest.raises(ModelContractError, match=r"image_shape \[3, 3, 1\] holds 9 values .* have 16") as exc:
        builtin.cnn(inputs(16), {"image_shape": [3, 3, 1]})
    assert "\n" not in str(exc.value)


def test_cnn_refuses_a_width_that_is_not_a_square_by_default():
    with pytest.raises(ModelContractError, match="holds 9 values but the preprocessed inputs have 10"):
        builtin.cnn(inputs(10), {})


@pytest.mark.parametrize("hparams", [{}, {"image_shape": [2, 4, 2]}])
def test_cnn_builds_a_flat_body(hparams):
    output = builtin.cnn(inputs(16), {**hparams, "filters": [2, 3], "dense_units": 5})
    assert tuple(output.shape) == (None, 5)


def test_cnn_through_build_body_reports_its_own_error():
    with pytest.raises(ModelContractError, match=r"^cnn: hparams.image_shape \[3, 3, 1\] holds 9 values"):
        build_body("cnn", inputs(16), {"image_shape": [3, 3, 1]})


def test_mlp_honours_hidden_units():
    output = builtin.mlp(inputs(), {"hidden_units": [8, 4, 3], "dropout": 0})
    assert tuple(output.shape) == (None, 3)


def test_mlp_layers_follow_hidden_units():
    source = inputs()
    model = keras.Model(source, builtin.mlp(source, {"hidden_units": [8, 4], "dropout": 0.2}))
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [8, 4]
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 2
