"""The predict request: a JSON body -> numpy tensors keyed by signature input, in row ("instances") and
columnar ("inputs") formats (TF Serving's util/json_tensor.cc::FillPredictRequestFromJson)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.codec.errors import (
    _DBL_MAX,
    _DOUBLE_MAX_EXACT_INT,
    _FLOAT_MAX_EXACT_INT,
    _FLT_MAX,
    _INT32_LIMIT,
    _INT32_MIN,
    _INT64_LIMIT,
    _INT64_MIN,
    _MAX_RANK,
    _NUMPY_INPUT_DTYPE,
    _UINT32_LIMIT,
    _UINT64_LIMIT,
    DT_BFLOAT16,
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
    UNIMPLEMENTED,
    ServingError,
    _invalid,
    dtype_string,
)
from serving.codec.reader import (
    _decode_b64_object,
    _format_error,
    _is_b64_object,
    _lossless,
    _lossy_error,
    _parse_document,
    _signature_name,
)
from serving.codec.writer import _json_type, _utf8, json_value_to_string


@dataclass(frozen=True)
class PredictJsonRequest:
    signature_name: str  # "" when the body has none (the server then uses "serving_default")
    row_format: bool  # True for "instances", False for "inputs"
    payload: object  # the parsed JSON value of "instances" / "inputs"
    # TF Serving checks the instances/inputs keys only after resolving the signature (a missing
    # servable or signature wins over a malformed body), so such an error waits here and
    # tensors_from_predict_request raises it.
    deferred_error: ServingError | None = None
    # False when the body has no `true`/`false` literal: then numpy may convert the payload in one step,
    # since the only JSON values it would accept silently for a number are booleans.
    may_hold_booleans: bool = True


def parse_predict_request(body: bytes) -> PredictJsonRequest:
    """Parses a predict body (FillPredictRequestFromJson up to the signature lookup).

    Raises ServingError for JSON syntax errors, a non-object body and a non-string signature_name.
    Errors about the ``instances``/``inputs`` keys are carried in ``deferred_error`` and raised by
    :func:`tensors_from_predict_request`, matching TF Serving's order of checks."""
    doc = _parse_document(body)
    signature_name = _signature_name(doc)
    booleans = b"true" in body or b"false" in body
    if "instances" in doc:
        instances = doc["instances"]
        if "inputs" in doc:
            error = _format_error(
                doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
            )
        elif type(instances) is not list:
            error = _format_error(doc, "Excepting 'instances' to be an list/array")
        elif not instances:
            error = _format_error(doc, "No values in 'instances' array")
        else:
            return PredictJsonRequest(signature_name, True, instances, may_hold_booleans=booleans)
        return PredictJsonRequest(signature_name, True, None, error)
    if "inputs" in doc:
        return PredictJsonRequest(signature_name, False, doc["inputs"], may_hold_booleans=booleans)
    return PredictJsonRequest(signature_name, False, None, _invalid("Missing 'inputs' or 'instances' key"))


def _type_error(val: Any, dtype: int) -> ServingError:
    return _invalid(
        f"JSON Value: {json_value_to_string(val)} Type: {_json_type(val)} "
        f"is not of expected type: {dtype_string(dtype)}"
    )


def _is_number(val: Any) -> bool:
    return (type(val) is int or type(val) is float) and val is not True and val is not False


def _convert_float(val: Any) -> float:
    if not _is_number(val):
        raise _type_error(val, DT_FLOAT)
    if not _lossless(val, _FLOAT_MAX_EXACT_INT, _FLT_MAX):
        raise _lossy_error(val, "float")
    return float(val)


def _convert_double(val: Any) -> float:
    if not _is_number(val):
        raise _type_error(val, DT_DOUBLE)
    if not _lossless(val, _DOUBLE_MAX_EXACT_INT, _DBL_MAX):
        raise _lossy_error(val, "double")
    return float(val)


def _int_converter(dtype: int, low: int, limit: int) -> Callable[[Any], int]:
    def convert(val: Any) -> int:
        if type(val) is not int or not low <= val < limit:
            raise _type_error(val, dtype)
        return val

    return convert


def _convert_bool(val: Any) -> bool:
    if type(val) is not bool:
        raise _type_error(val, DT_BOOL)
    return val


def _convert_string(val: Any) -> bytes:
    if type(val) is not str:
        raise _type_error(val, DT_STRING)
    return _utf8(val)


def _unimplemented_converter(dtype: int) -> Callable[[Any], Any]:
    def convert(val: Any) -> Any:
        raise ServingError(
            UNIMPLEMENTED,
            f"Conversion of JSON Value: {json_value_to_string(val)} to type: {dtype_string(dtype)}",
        )

    return convert


_CONVERTERS: dict[int, Callable[[Any], Any]] = {
    DT_FLOAT: _convert_float,
    DT_DOUBLE: _convert_double,
    DT_INT32: _int_converter(DT_INT32, _INT32_MIN, _INT32_LIMIT),
    DT_INT16: _int_converter(DT_INT16, _INT32_MIN, _INT32_LIMIT),
    DT_INT8: _int_converter(DT_INT8, _INT32_MIN, _INT32_LIMIT),
    DT_UINT8: _int_converter(DT_UINT8, _INT32_MIN, _INT32_LIMIT),
    DT_INT64: _int_converter(DT_INT64, _INT64_MIN, _INT64_LIMIT),
    DT_UINT32: _int_converter(DT_UINT32, 0, _UINT32_LIMIT),
    DT_UINT64: _int_converter(DT_UINT64, 0, _UINT64_LIMIT),
    DT_BOOL: _convert_bool,
    DT_STRING: _convert_string,
}


def _dense_shape(val: Any) -> list[int]:
    """GetDenseTensorShape: the shape implied by the first element of every nesting level."""
    shape = []
    while type(val) is list:
        shape.append(len(val))
        if not val:
            break
        val = val[0]
    return shape


def _fill_values(val: Any, shape: list[int], dtype: int, out: list[Any]) -> None:
    """FillTensorProto: appends the leaves of ``val`` (depth-first) to ``out``, checking that every
    leaf sits at depth ``len(shape)`` and every list has the size ``shape`` expects."""
    rank = len(shape)
    convert = _CONVERTERS.get(dtype) or _unimplemented_converter(dtype)
    todo: list[tuple[Any, int]] = [(val, 0)]
    while todo:
        item, level = todo.pop()
        if type(item) is list:
            if level >= rank:
                raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
            if len(item) != shape[level]:
                raise _invalid(
                    f"Encountered list at unexpected size: {len(item)} at level: {level} "
                    f"expected size: {shape[level]}"
                )
            todo.extend((child, level + 1) for child in reversed(item))
            continue
        if level != rank:
            raise _invalid(
                f"JSON Value: {json_value_to_string(item)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        if type(item) is dict:
            if dtype != DT_STRING:
                raise _type_error(item, dtype)
            out.append(_decode_b64_object(item))
        else:
            out.append(convert(item))


class _PendingTensor:
    """Values and shape of one input while it is being assembled (TensorProto's role in C++)."""

    __slots__ = ("dtype", "shape", "values")

    def __init__(self, dtype: int):
        self.dtype = dtype
        self.shape: list[int] = []
        self.values: list[Any] = []


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(dim) for dim in shape) + "]"


def _add_instance_item(
    item: Any, name: str, input_dtypes: Mapping[str, int], tensors: dict[str, _PendingTensor], seen: dict
) -> None:
    """AddInstanceItem: one instance's value for input ``name``; all instances must agree in shape."""
    if name not in input_dtypes:
        raise _invalid(f"JSON object: does not have named input: {name}")
    tensor = tensors.get(name)
    if tensor is None:
        tensor = tensors[name] = _PendingTensor(input_dtypes[name])
    shape = _dense_shape(item)
    values: list[Any] = []
    _fill_values(item, shape, tensor.dtype, values)
    if name not in seen:
        seen[name] = (len(values), shape)
        tensor.shape = shape
    else:
        expected_size, expected_shape = seen[name]
        if expected_size != len(values):
            raise _invalid(f"Expecting tensor size: {expected_size} but got: {len(values)}")
        if expected_shape != shape:
            raise _invalid(f"Expecting shape {_shape_text(expected_shape)} but got: {_shape_text(shape)}")
    tensor.values.extend(values)


def _wrap_instance_error(error: ServingError, index: int, key: str | None) -> ServingError:
    where = f"{index}" if key is None else f"{index} key: {key}"
    return _invalid(f"Failed to process element: {where} of 'instances' list. Error: {error.status_string()}")


def _tensors_from_instances(
    instances: list[Any], input_dtypes: Mapping[str, int]
) -> dict[str, _PendingTensor]:
    """FillTensorMapFromInstancesList (row format)."""
    if type(instances[0]) is not dict and len(input_dtypes) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    named = type(instances[0]) is dict and not _is_b64_object(instances[0])
    input_names = sorted(input_dtypes, key=_utf8)
    tensors: dict[str, _PendingTensor] = {}
    seen: dict[str, tuple[int, list[int]]] = {}
    first_name = next(iter(input_dtypes))
    for index, element in enumerate(instances):
        element_is_named = type(element) is dict and not _is_b64_object(element)
        if named:
            if not element_is_named:
                raise _invalid(f"Expecting object but got list at item {index} of input list")
            for key, value in element.items():
                try:
                    _add_instance_item(value, key, input_dtypes, tensors, seen)
                except ServingError as error:
                    raise _wrap_instance_error(error, index, key) from None
            if sorted(element, key=_utf8) != input_names:
                raise _invalid(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{json_value_to_string(element)} keys must be equal to: {','.join(input_names)}"
                )
        else:
            if element_is_named:
                raise _invalid(f"Expecting value/list but got object at item {index} of input list")
            try:
                _add_instance_item(element, first_name, input_dtypes, tensors, seen)
            except ServingError as error:
                raise _wrap_instance_error(error, index, None) from None
    for tensor in tensors.values():
        tensor.shape = [len(instances), *tensor.shape]
    return tensors


def _tensors_from_inputs(inputs: Any, input_dtypes: Mapping[str, int]) -> dict[str, _PendingTensor]:
    """FillTensorMapFromInputsMap (columnar format)."""
    if type(inputs) is not dict or _is_b64_object(inputs):
        if len(input_dtypes) > 1:
            raise _invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        items = [(next(iter(input_dtypes)), inputs)]
    else:
        items = []
        for name in input_dtypes:
            if name not in inputs:
                raise _invalid(f"Missing named input: {name} in 'inputs' object.")
            items.append((name, inputs[name]))
    tensors = {}
    for name, value in items:
        tensor = _PendingTensor(input_dtypes[name])
        tensor.shape = _dense_shape(value)
        _fill_values(value, tensor.shape, tensor.dtype, tensor.values)
        tensors[name] = tensor
    return tensors


def _to_numpy(name: str, tensor: _PendingTensor) -> np.ndarray:
    if len(tensor.shape) > _MAX_RANK:
        raise _invalid(f"tensor parsing error: {name}")
    dtype = tensor.dtype
    if dtype == DT_STRING:
        array = np.empty(len(tensor.values), dtype=object)
        array[:] = tensor.values
        return array.reshape(tensor.shape)
    if dtype == DT_FLOAT:
        return np.array(tensor.values, dtype=np.float64).astype(np.float32).reshape(tensor.shape)
    if dtype in (DT_INT8, DT_INT16, DT_UINT8):
        # Values travel as int32 (TensorProto.int_val) and are narrowed with wrap-around.
        return np.array(tensor.values, dtype=np.int32).astype(_NUMPY_INPUT_DTYPE[dtype]).reshape(tensor.shape)
    numpy_dtype = _NUMPY_INPUT_DTYPE.get(dtype) or _numpy_dtype_without_json_values(dtype)
    if numpy_dtype is None:
        raise _invalid(f"tensor parsing error: {name}")
    return np.array(tensor.values, dtype=numpy_dtype).reshape(tensor.shape)


def _numpy_dtype_without_json_values(dtype: int) -> Any:
    """Types JSON cannot carry values for; an empty tensor of them is still valid."""
    if dtype == DT_BFLOAT16:
        try:
            import ml_dtypes
        except ImportError:
            return None
        return ml_dtypes.bfloat16
    return {
        DT_HALF: np.float16,
        DT_UINT16: np.uint16,
        DT_COMPLEX64: np.complex64,
        DT_COMPLEX128: np.complex128,
    }.get(dtype)


# DataType -> (numpy type, largest magnitude taken without the exact path's per-value checks). Floats stop at
# the largest integer they hold exactly, since numpy cannot tell `16777217` from `16777217.0` once converted.
_FAST_NUMERIC = {
    DT_FLOAT: (np.float32, _FLOAT_MAX_EXACT_INT),
    DT_DOUBLE: (np.float64, _DOUBLE_MAX_EXACT_INT),
    DT_INT32: (np.int32, _INT32_LIMIT - 1),
    DT_INT64: (np.int64, _INT64_LIMIT - 1),
}


def _fast_numeric(payload: Any, dtype: int, may_hold_booleans: bool) -> np.ndarray | None:
    """The hot path: a dense, all-number payload (any nesting) for one numeric input, converted by numpy in
    one step. Returns None whenever anything needs the exact (general) path, including every error case:
    booleans, strings, objects, nulls, ragged lists, empty tensors, out-of-range or lossy numbers."""
    fast = _FAST_NUMERIC.get(dtype)
    if fast is None or may_hold_booleans or type(payload) is not list:
        return None
    numpy_type, limit = fast
    try:
        array = np.array(payload)  # numbers only come out as int64 or float64; anything else does not
    except (ValueError, OverflowError, TypeError):
        return None
    kind = array.dtype.kind
    if array.size == 0 or not (kind == "i" or (kind == "f" and dtype in (DT_FLOAT, DT_DOUBLE))):
        return None
    if kind == "i":
        low = -limit if dtype in (DT_FLOAT, DT_DOUBLE) else (_INT32_MIN if dtype == DT_INT32 else _INT64_MIN)
        if array.min() < low or array.max() > limit:
            return None
    elif not np.abs(array).max() <= limit:  # inf, too large for the dtype, or NaN: the exact path decides
        return None
    return array.astype(numpy_type, copy=False)


def tensors_from_predict_request(
    req: PredictJsonRequest, input_dtypes: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """The request's tensors, keyed by signature input name (FillPredictRequestFromJson after the
    signature lookup, then TensorProto -> Tensor).

    ``input_dtypes`` maps each signature input key to its tensorflow DataType enum value. DT_STRING
    inputs become numpy object arrays of bytes."""
    if not input_dtypes:
        raise _invalid(f"Failed to get input map for signature: {req.signature_name or 'DEFAULT'}")
    if req.deferred_error is not None:
        raise req.deferred_error
    if len(input_dtypes) == 1:
        ((name, dtype),) = input_dtypes.items()
        array = _fast_numeric(req.payload, dtype, req.may_hold_booleans)
        if array is not None:
            return {name: array}
    if req.row_format:
        pending = _tensors_from_instances(req.payload, input_dtypes)
    else:
        pending = _tensors_from_inputs(req.payload, input_dtypes)
    return {name: _to_numpy(name, tensor) for name, tensor in pending.items()}
