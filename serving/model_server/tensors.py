"""numpy <-> TensorProto for gRPC; outputs use the typed `*_val` fields, as TF Serving's AsProtoField does.

Inputs of the common dtypes are decoded here with numpy, step for step as `tf.make_ndarray`
(`tensor_util.MakeNdarray`) does, because its dtype lookups cost more than the decoding itself on the request
path; every other dtype (strings, half, complex, quantized, ...) still goes through TensorFlow.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.codec import ServingError

_VALUE_FIELDS = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


# DataType -> (numpy dtype, typed value field), exactly as MakeNdarray maps them.
_DECODE = {
    types_pb2.DT_FLOAT: (np.float32, "float_val"),
    types_pb2.DT_DOUBLE: (np.float64, "double_val"),
    types_pb2.DT_INT32: (np.int32, "int_val"),
    types_pb2.DT_INT16: (np.int16, "int_val"),
    types_pb2.DT_INT8: (np.int8, "int_val"),
    types_pb2.DT_UINT8: (np.uint8, "int_val"),
    types_pb2.DT_UINT16: (np.uint16, "int_val"),
    types_pb2.DT_INT64: (np.int64, "int64_val"),
    types_pb2.DT_UINT32: (np.uint32, "uint32_val"),
    types_pb2.DT_UINT64: (np.uint64, "uint64_val"),
    types_pb2.DT_BOOL: (np.bool_, "bool_val"),
}


def _decode(proto: tensor_pb2.TensorProto) -> np.ndarray:
    decode = _DECODE.get(proto.dtype)
    if decode is None:
        return tf.make_ndarray(proto)
    dtype, field = decode
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_content:
        # The copy makes the array writable (bytes are immutable), as MakeNdarray's result is.
        return np.frombuffer(proto.tensor_content, dtype=dtype).copy().reshape(shape)
    values = np.fromiter(getattr(proto, field), dtype=dtype)
    if values.size == 0:
        return np.zeros(shape, dtype)
    num_elements = np.prod(shape, dtype=np.int64)
    if values.size != num_elements:
        # A short value list repeats its last value (TensorProto's documented fill rule).
        values = np.pad(values, (0, num_elements - values.size), "edge")
    return values.reshape(shape)


def array_from_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    try:
        return _decode(proto)
    except Exception as exc:  # noqa: BLE001 - a malformed TensorProto is the caller's fault
        raise ServingError("INVALID_ARGUMENT", f"Cannot parse tensor from proto: {exc}") from exc


def proto_from_array(array: np.ndarray, dtype: int) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    field = _VALUE_FIELDS.get(dtype)
    if field is None:
        # Half, bfloat16, complex, ...: fall back to TensorFlow's own encoding.
        return tf.make_tensor_proto(array)
    flat = array.ravel()
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    else:
        getattr(proto, field).extend(flat.tolist())
    return proto
