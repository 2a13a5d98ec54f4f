"""The user-model contract: find the function `train.model` names, call it, check what it returns.

`train.model` is a built-in (`mlp`, `cnn`), a file (`path/to/module.py:function`; the run snapshot
carries a copy, so workers elsewhere import the exact code that was resolved) or an importable
`package.module:function`. Every way it can be wrong is a one-line `ModelContractError` naming it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec

from tasks.errors import BadInputError

BUILTINS = {"mlp": "tasks.models.builtin:mlp", "cnn": "tasks.models.builtin:cnn"}
CHECK_WIDTH = 16  # width of the stand-in preprocessed inputs used to check a body before a run


class ModelContractError(BadInputError):
    """`train.model` cannot be loaded, or its function does not return a usable model body."""


def is_file_reference(ref: str) -> bool:
    return ":" in ref and ref.rpartition(":")[0].endswith(".py")


def load_model_function(ref: str) -> Callable[..., Any]:
    """The function `ref` names (a built-in name, `file.py:function` or `package.module:function`)."""
    target = BUILTINS.get(ref, ref)
    location, sep, name = target.rpartition(":")  # the last colon: a URL has one of its own
    if not sep or not location or not name:
        raise ModelContractError(f"train.model {ref!r}: expected a built-in ({', '.join(BUILTINS)}), "
                                 f"path/to/file.py:function or package.module:function")
    module = _import_file(ref, location) if location.endswith(".py") else _import_module(ref, location)
    function = getattr(module, name, None)
    if function is None:
        raise ModelContractError(f"train.model {ref!r}: {location} has no function {name!r}")
    if not callable(function):
        raise ModelContractError(f"train.model {ref!r}: {name!r} in {location} is not a function")
    return function


def _import_module(ref: str, module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raises while it loads
        raise ModelContractError(f"train.model {ref!r}: cannot import {module_name}: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def _import_file(ref: str, location: str) -> Any:
    path = _local_copy(ref, location)
    module_name = f"kiln_user_model_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelContractError(f"train.model {ref!r}: {path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's module may fail in any way; one line says how
        raise ModelContractError(f"train.model {ref!r}: importing {path} failed: {type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    sys.modules[module_name] = module
    return module


def _local_copy(ref: str, location: str) -> Path:
    """A local path for the module file (downloaded when it lives in object storage)."""
    if "://" not in location or location.startswith("file://"):
        path = Path(location.removeprefix("file://"))
        if not path.is_file():
            raise ModelContractError(f"train.model {ref!r}: file not found: {path}")
        return path
    target = Path(tempfile.mkdtemp(prefix="kiln-model-")) / Path(location).name
    try:
        with fsspec.open(location, "rb") as src:
            target.write_bytes(src.read())
    except FileNotFoundError:
        raise ModelContractError(f"train.model {ref!r}: file not found: {location}") from None
    return target


def build_body(ref: str, inputs: Any, hparams: dict[str, Any]) -> Any:
    """Call the model function on the preprocessed inputs; return its output tensor [batch, units]."""
    function = load_model_function(ref)
    try:
        result = function(inputs, dict(hparams))
    except ModelContractError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelContractError(f"train.model {ref!r} raised {type(exc).__name__}: {first}") from None
    if _is_layer(result):
        result = result(inputs)
    if not _is_keras_tensor(result):
        raise ModelContractError(f"train.model {ref!r} returned {type(result).__name__}; it must return a Keras "
                                 f"tensor (the body's output) or a Keras layer or model to apply to its inputs")
    shape = tuple(result.shape)
    if len(shape) != 2 or shape[-1] is None:
        raise ModelContractError(f"train.model {ref!r} returned a tensor of shape {_shape(shape)}; the task's head "
                                 f"needs (batch, units), e.g. end the body with Flatten or a pooling layer")
    return result


def check_model_function(ref: str, hparams: dict[str, Any]) -> None:
    """Build the body once on stand-in inputs, before a run is triggered (TensorFlow is imported)."""
    if ref in BUILTINS:
        return  # built-ins are tested with kiln; their shape checks need the real inputs
    import tf_keras as keras

    build_body(ref, keras.Input(shape=(CHECK_WIDTH,), dtype="float32", name="preprocessed"), hparams)


def _is_layer(value: Any) -> bool:
    import tf_keras as keras

    return isinstance(value, keras.layers.Layer)


def _is_keras_tensor(value: Any) -> bool:
    import tf_keras as keras

    try:
        return bool(keras.backend.is_keras_tensor(value))
    except ValueError:  # not a tensor of any kind
        return False


def _shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(shape)) + ")"
