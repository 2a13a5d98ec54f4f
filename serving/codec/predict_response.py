"""The predict response: output tensors -> the JSON body, ``{"predictions": ...}`` for row requests and
``{"outputs": ...}`` for columnar ones, laid out as rapidjson's PrettyWriter does (TF Serving's
util/json_tensor.cc::MakeJsonFromTensors)."""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from serving.codec.errors import (
    _NUMPY_INPUT_DTYPE,
    DT_BOOL,
    DT_COMPLEX64,
    DT_COMPLEX128,
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT16,
    DT_UINT32,
    DT_UINT64,
    _invalid,
    dtype_string,
)
from serving.codec.writer import _format_float_tokens, _json_bytes, _json_str, _utf8, format_floats

_INDENT = b"    "


def _numpy_dtype_enum(array: np.ndarray) -> int:
    kind = array.dtype
    for enum, numpy_type in _NUMPY_INPUT_DTYPE.items():
        if kind == numpy_type and enum != DT_STRING:
            return enum
    if kind.kind in "OSU":
        return DT_STRING
    if kind == np.float16:
        return DT_HALF
    if kind == np.uint16:
        return DT_UINT16
    if kind == np.complex64:
        return DT_COMPLEX64
    if kind == np.complex128:
        return DT_COMPLEX128
    return 0


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return _utf8(value)
    return bytes(value)


def _leaf_tokens(name: str, array: np.ndarray, dtype: int, leaf_depth: int) -> list[bytes]:
    """One JSON token per tensor element, in row-major order. ``leaf_depth`` is the number of open
    JSON containers around each leaf (it sets the indentation of ``{"b64": ...}`` objects)."""
    flat = array.reshape(-1)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        return _format_float_tokens(flat, dtype)
    if dtype in (DT_INT32, DT_INT16, DT_INT8, DT_UINT8, DT_INT64, DT_UINT32, DT_UINT64):
        return [str(int(value)).encode() for value in flat.tolist()]
    if dtype == DT_BOOL:
        return [b"true" if value else b"false" for value in flat.tolist()]
    if dtype == DT_STRING:
        raw_values = [_as_bytes(value) for value in flat.tolist()]
        if name.endswith("_bytes"):
            open_ = b"{\n" + _INDENT * (leaf_depth + 1) + b'"b64": "'
            close = b'"\n' + _INDENT * leaf_depth + b"}"
            return [open_ + base64.b64encode(raw) + close for raw in raw_values]
        return [_json_bytes(raw) for raw in raw_values]
    if flat.size:
        raise _invalid(f"Failed to write JSON value for tensor type: {dtype_string(dtype)}")
    return []


def _nest(tokens: list[bytes], shape: tuple[int, ...], depth: int, single_line: bool) -> bytes:
    """A tensor (rank >= 1) as a JSON array the way PrettyWriter lays it out; ``depth`` is the number
    of open containers around the array."""
    count = shape[0]
    if count == 0:
        return b"[]"
    if single_line:
        open_, separator, close = b"[", b", ", b"]"
    else:
        inner = b"\n" + _INDENT * (depth + 1)
        open_, separator, close = b"[" + inner, b"," + inner, b"\n" + _INDENT * depth + b"]"
    if len(shape) == 1:
        return open_ + separator.join(tokens) + close
    step = math.prod(shape[1:])
    inner_shape = shape[1:]
    items = [
        _nest(tokens[i * step : (i + 1) * step], inner_shape, depth + 1, single_line) for i in range(count)
    ]
    return open_ + separator.join(items) + close


def _output_dtype(name: str, array: np.ndarray, output_dtypes: Mapping[str, int]) -> int:
    dtype = output_dtypes.get(name)
    return dtype if dtype is not None else _numpy_dtype_enum(array)


def _row_item_value(name: str, array: np.ndarray, dtype: int, depth: int) -> list[bytes]:
    """The per-instance JSON values of one output (batch dimension first), written single-line."""
    inner_shape = array.shape[1:]
    tokens = _leaf_tokens(name, array, dtype, depth + len(inner_shape))
    if not inner_shape:
        return tokens
    batch = array.shape[0]
    step = math.prod(inner_shape)
    return [_nest(tokens[i * step : (i + 1) * step], inner_shape, depth, True) for i in range(batch)]


def _fast_float_row_predictions(array: np.ndarray, dtype: int) -> bytes:
    """Single 1-D/2-D float output in row format: the common case, without the generic writer."""
    texts = format_floats(array, dtype)
    if array.ndim == 1:
        body = ", ".join(texts)
    else:
        width = array.shape[1]
        body = ", ".join(["[" + ", ".join(texts[i : i + width]) + "]" for i in range(0, len(texts), width)])
    return b'{\n    "predictions": [' + body.encode() + b"\n    ]\n}"


def predict_response_json(
    outputs: Mapping[str, np.ndarray], output_dtypes: Mapping[str, int], row_format: bool
) -> bytes:
    """The predict response body: ``{"predictions": ...}`` for row requests, ``{"outputs": ...}`` for
    columnar ones. ``output_dtypes`` gives each output's DataType (float vs double printing);
    outputs missing from it are typed from their numpy dtype."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    arrays = {name: np.asarray(value) for name, value in outputs.items()}
    if row_format:
        return _row_format_json(arrays, output_dtypes)
    return _columnar_format_json(arrays, output_dtypes)


def _row_format_json(arrays: dict[str, np.ndarray], output_dtypes: Mapping[str, int]) -> bytes:
    batch_size = -1
    for name, array in arrays.items():
        if array.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        current = array.shape[0]
        if batch_size >= 0 and batch_size != current:
            raise _invalid(
                f"Tensor name: {name} has inconsistent batch size: {current} expecting: {batch_size}"
            )
        batch_size = current
    if batch_size == 0:
        return b'{\n    "predictions": []\n}'
    if len(arrays) == 1:
        ((name, array),) = arrays.items()
        dtype = _output_dtype(name, array, output_dtypes)
        if dtype in (DT_FLOAT, DT_DOUBLE) and array.ndim <= 2 and array.size:
            return _fast_float_row_predictions(array, dtype)
        items = _row_item_value(name, array, dtype, 2)
        return b'{\n    "predictions": [' + b", ".join(items) + b"\n    ]\n}"
    per_output = [
        (_json_str(name), _row_item_value(name, array, _output_dtype(name, array, output_dtypes), 3))
        for name, array in arrays.items()
    ]
    key_indent = b"\n" + _INDENT * 3
    objects = [
        b"\n"
        + _INDENT * 2
        + b"{"
        + b",".join(key_indent + key + b": " + values[item] for key, values in per_output)
        + b"\n"
        + _INDENT * 2
        + b"}"
        for item in range(batch_size)
    ]
    return b'{\n    "predictions": [' + b",".join(objects) + b"\n    ]\n}"


def _columnar_value(name: str, array: np.ndarray, dtype: int, depth: int) -> bytes:
    tokens = _leaf_tokens(name, array, dtype, depth + array.ndim)
    if array.ndim == 0:
        return tokens[0]
    return _nest(tokens, array.shape, depth, False)


def _columnar_format_json(arrays: dict[str, np.ndarray], output_dtypes: Mapping[str, int]) -> bytes:
    if len(arrays) == 1:
        ((name, array),) = arrays.items()
        value = _columnar_value(name, array, _output_dtype(name, array, output_dtypes), 1)
        return b'{\n    "outputs": ' + value + b"\n}"
    members = [
        b"\n"
        + _INDENT * 2
        + _json_str(name)
        + b": "
        + _columnar_value(name, array, _output_dtype(name, array, output_dtypes), 2)
        for name, array in arrays.items()
    ]
    return b'{\n    "outputs": {' + b",".join(members) + b"\n    }\n}"
