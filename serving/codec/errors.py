"""TF Serving status codes (:class:`ServingError`, with its HTTP and gRPC mappings) and TensorFlow's
DataType enum and numeric limits, shared by the rest of the codec."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import grpc

# --------------------------------------------------------------------------------------------------
# Status codes and errors
# --------------------------------------------------------------------------------------------------

# http_server.cc::ToHTTPStatusCode
_HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNIMPLEMENTED = "UNIMPLEMENTED"


class ServingError(Exception):
    """A TF Serving status. ``code`` is a tensorflow.error.Code name ("INVALID_ARGUMENT", ...);
    ``message`` is TF Serving's exact text (what goes into ``{"error": message}``)."""

    def __init__(self, code: str, message: str):
        if code not in _HTTP_STATUS or code == "OK":
            raise ValueError(f"ServingError code must be a non-OK tensorflow.error.Code name, got {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.code!r}, {self.message!r})"

    def __str__(self) -> str:
        return self.message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.code]

    @property
    def grpc_status(self) -> grpc.StatusCode:
        import grpc

        return grpc.StatusCode[self.code]

    def status_string(self) -> str:
        """``absl::Status::ToString()``: how a nested cause is quoted inside another message."""
        return f"{self.code}: {self.message}"


def _invalid(message: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------------------------------
# DataType enum (tensorflow/core/framework/types.proto). Mirrored here so the predict path does not
# import TensorFlow; the values are part of the wire format and never change.
# --------------------------------------------------------------------------------------------------

DT_FLOAT = 1
DT_DOUBLE = 2
DT_INT32 = 3
DT_UINT8 = 4
DT_INT16 = 5
DT_INT8 = 6
DT_STRING = 7
DT_COMPLEX64 = 8
DT_INT64 = 9
DT_BOOL = 10
DT_BFLOAT16 = 14
DT_UINT16 = 17
DT_COMPLEX128 = 18
DT_HALF = 19
DT_UINT32 = 22
DT_UINT64 = 23

_DTYPE_NAMES = [
    "invalid",
    "float",
    "double",
    "int32",
    "uint8",
    "int16",
    "int8",
    "string",
    "complex64",
    "int64",
    "bool",
    "qint8",
    "quint8",
    "qint32",
    "bfloat16",
    "qint16",
    "quint16",
    "uint16",
    "complex128",
    "half",
    "resource",
    "variant",
    "uint32",
    "uint64",
    "float8_e5m2",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e4m3b11fnuz",
    "float8_e5m2fnuz",
    "int4",
    "uint4",
    "int2",
    "uint2",
    "float4_e2m1fn",
]


def dtype_string(dtype: int) -> str:
    """TensorFlow's ``DataTypeString``: ``DT_FLOAT`` -> ``float``, ``DT_HALF_REF`` -> ``half_ref``."""
    base, ref = (dtype - 100, "_ref") if dtype > 100 else (dtype, "")
    if 0 < base < len(_DTYPE_NAMES):
        return _DTYPE_NAMES[base] + ref
    return f"unknown dtype enum ({dtype})"


_NUMPY_INPUT_DTYPE = {
    DT_FLOAT: np.float32,
    DT_DOUBLE: np.float64,
    DT_INT32: np.int32,
    DT_INT16: np.int16,
    DT_INT8: np.int8,
    DT_UINT8: np.uint8,
    DT_INT64: np.int64,
    DT_UINT32: np.uint32,
    DT_UINT64: np.uint64,
    DT_BOOL: np.bool_,
    DT_STRING: np.object_,
}

_FLT_MAX = float(np.finfo(np.float32).max)
_DBL_MAX = float(np.finfo(np.float64).max)
_INT32_MIN, _INT32_LIMIT = -(2**31), 2**31
_INT64_MIN, _INT64_LIMIT = -(2**63), 2**63
_UINT32_LIMIT, _UINT64_LIMIT = 2**32, 2**64
# Largest integer a float / double holds exactly (IsLosslessDecimal's kMaxInt).
_FLOAT_MAX_EXACT_INT = 2**24 - 1
_DOUBLE_MAX_EXACT_INT = 2**53 - 1
# rapidjson's Value::IsFloat() range check.
_RAPIDJSON_FLOAT_RANGE = 3.4028234e38

# Tensors with more dimensions than numpy supports cannot be built here.
_MAX_RANK = 64
