"""TF Serving's REST JSON codec (``util/json_tensor.cc``, ``http_rest_api_util.cc``), reproduced in Python.

Pure functions: bytes in, numpy arrays / protos / bytes out, errors as :class:`ServingError` carrying
TF Serving's exact status code and message. Behaviour follows the C++ code, including its quirks
(rapidjson parse errors and offsets, ``Excepting 'instances'`` typo, 256-byte value echoes, ``%g``
float printing, rapidjson PrettyWriter layout).

Modules: ``errors`` (status codes, DataType enum), ``writer`` (float text, rapidjson Writer),
``reader`` (rapidjson-compatible parsing and the request values all bodies share), ``predict_request``
(JSON -> tensors), ``predict_response`` (tensors -> JSON), ``examples`` (classify / regress) and
``protos`` (status / metadata). Protobuf modules from TensorFlow are imported lazily: importing
``tensorflow.core`` loads the whole TF runtime, which the predict path does not need.
"""

from serving.codec.errors import (
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
    INVALID_ARGUMENT,
    UNIMPLEMENTED,
    ServingError,
    dtype_string,
)
from serving.codec.examples import (
    classify_response_json,
    parse_classify_regress_request,
    regress_response_json,
)
from serving.codec.predict_request import (
    PredictJsonRequest,
    parse_predict_request,
    tensors_from_predict_request,
)
from serving.codec.predict_response import predict_response_json
from serving.codec.protos import (
    metadata_json,
    status_json,
)
from serving.codec.writer import (
    error_json,
    format_float,
    json_value_to_string,
)

__all__ = [
    "DT_BFLOAT16",
    "DT_BOOL",
    "DT_COMPLEX128",
    "DT_COMPLEX64",
    "DT_DOUBLE",
    "DT_FLOAT",
    "DT_HALF",
    "DT_INT16",
    "DT_INT32",
    "DT_INT64",
    "DT_INT8",
    "DT_STRING",
    "DT_UINT16",
    "DT_UINT32",
    "DT_UINT64",
    "DT_UINT8",
    "INVALID_ARGUMENT",
    "PredictJsonRequest",
    "ServingError",
    "UNIMPLEMENTED",
    "classify_response_json",
    "dtype_string",
    "error_json",
    "format_float",
    "json_value_to_string",
    "metadata_json",
    "parse_classify_regress_request",
    "parse_predict_request",
    "predict_response_json",
    "regress_response_json",
    "status_json",
    "tensors_from_predict_request",
]
