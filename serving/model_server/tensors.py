"""numpy <-> TensorProto for gRPC; outputs use the typed `*_val` fields, as TF Serving's AsProtoField does."""

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


def array_from_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
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
