"""serving.codec against TF Serving's own codec tests (util/json_tensor_test.cc) and the REST error catalogue.

Expected texts are TF Serving's: rapidjson parse errors with byte offsets, values echoed as rapidjson's
PrettyWriter prints them, nested causes quoted as "INVALID_ARGUMENT: ...", and WriteDecimal float text.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import codec
from serving.codec import (
    DT_BFLOAT16,
    DT_BOOL,
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT8,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT64,
    ServingError,
    error_json,
    format_float,
    parse_predict_request,
    predict_response_json,
    tensors_from_predict_request,
)
from serving.codec.predict_request import (
    _fast_numeric,
    _tensors_from_inputs,
    _tensors_from_instances,
    _to_numpy,
)
from serving.codec.reader import _RapidJsonReader
from serving.codec.writer import _PrettyWriter, format_floats


def tensors(body: str | bytes, dtypes: dict[str, int]) -> dict[str, np.ndarray]:
    raw = body.encode() if isinstance(body, str) else body
    return tensors_from_predict_request(parse_predict_request(raw), dtypes)


def predict_error(body: str | bytes, dtypes: dict[str, int] | None = None) -> ServingError:
    with pytest.raises(ServingError) as caught:
        tensors(body, {"x": DT_FLOAT} if dtypes is None else dtypes)
    return caught.value


# ----------------------------------------------------------------------------------------------------
# ServingError
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "http"),
    [
        ("CANCELLED", 499),
        ("UNKNOWN", 500),
        ("INVALID_ARGUMENT", 400),
        ("DEADLINE_EXCEEDED", 504),
        ("NOT_FOUND", 404),
        ("ALREADY_EXISTS", 409),
        ("PERMISSION_DENIED", 403),
        ("RESOURCE_EXHAUSTED", 429),
        ("FAILED_PRECONDITION", 400),
        ("ABORTED", 409),
        ("OUT_OF_RANGE", 400),
        ("UNIMPLEMENTED", 501),
        ("INTERNAL", 500),
        ("UNAVAILABLE", 503),
        ("DATA_LOSS", 500),
        ("UNAUTHENTICATED", 401),
    ],
)
def test_status_code_maps_to_http_and_grpc(code, http):
    error = ServingError(code, "boom")
    assert error.http_status == http
    assert error.grpc_status.name == code
    assert error.message == "boom" == str(error)


def test_unknown_status_code_is_rejected():
    with pytest.raises(ValueError, match="NOPE"):
        ServingError("NOPE", "x")


# ----------------------------------------------------------------------------------------------------
# Request tensors (json_tensor_test.cc, FillPredictRequestFromJson cases)
# ----------------------------------------------------------------------------------------------------


def test_single_unnamed_tensor():
    result = tensors('{"instances": [[1,2],[3,4],[5,6]]}', {"default": DT_INT32})
    np.testing.assert_array_equal(result["default"], [[1, 2], [3, 4], [5, 6]])
    assert result["default"].dtype == np.int32


def test_mixed_int_and_float_input_for_float_tensor():
    result = tensors('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', {"default": DT_FLOAT})
    np.testing.assert_array_equal(
        result["default"], np.array([1, 2.0, 3, 4, 5.003, 0.007, 0.0], dtype=np.float32)
    )
    assert result["default"].dtype == np.float32


def test_mixed_int_and_float_input_for_double_tensor():
    result = tensors('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', {"default": DT_DOUBLE})
    np.testing.assert_array_equal(result["default"], [1.0, 2, 3, 4, 0.662, 0, 0.0])
    assert result["default"].dtype == np.float64


def test_signature_name_is_read():
    request = parse_predict_request(b'{"signature_name": "predict_images", "instances": [[1,2]]}')
    assert request.signature_name == "predict_images"
    assert request.row_format is True
    assert tensors_from_predict_request(request, {"default": DT_INT32})["default"].shape == (1, 2)


def test_missing_signature_name_is_empty():
    assert parse_predict_request(b'{"inputs": [1]}').signature_name == ""


def test_bytes_after_the_document_are_ignored():
    result = tensors('{"instances": [[1,2],[3,4],[5,6]]}X', {"default": DT_INT32})
    assert result["default"].shape == (3, 2)


def test_base64_scalars():
    result = tensors('{"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}', {"default": DT_STRING})
    assert result["default"].dtype == object
    assert result["default"].tolist() == [b"hello", b"world"]


def test_base64_lists():
    result = tensors('{"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}', {"default": DT_STRING})
    assert result["default"].shape == (2, 1)
    assert result["default"].tolist() == [[b"hello"], [b"world"]]


def test_single_named_tensor_base64():
    body = '{"instances": [{"default": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}'
    result = tensors(body, {"default": DT_STRING})
    assert result["default"].shape == (1, 2, 1)
    assert result["default"].ravel().tolist() == [b"hello", b"world"]


def test_multiple_named_tensors():
    body = """{"instances": [
        {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"],
         "float_tensor": [1.0, NaN], "dbl_tensor": [NaN]},
        {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],
         "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}"""
    dtypes = {
        "int_tensor": DT_INT32,
        "str_tensor": DT_STRING,
        "float_tensor": DT_FLOAT,
        "dbl_tensor": DT_DOUBLE,
    }
    result = tensors(body, dtypes)
    assert result["int_tensor"].shape == (2, 3, 2)
    assert result["int_tensor"].ravel().tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]
    assert result["str_tensor"].tolist() == [[b"foo", b"bar"], [b"baz", b"bat"]]
    floats = result["float_tensor"]
    assert floats.shape == (2, 2) and floats.dtype == np.float32
    assert (
        floats[0, 0] == 1.0 and math.isnan(floats[0, 1]) and floats[1, 0] == 2.0 and floats[1, 1] == math.inf
    )
    assert result["dbl_tensor"].shape == (2, 1) and math.isnan(result["dbl_tensor"][0, 0])


def test_columnar_single_tensor_named_and_unnamed():
    named = tensors('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}', {"int_tensor": DT_INT32})
    unnamed = tensors('{"inputs": [[[1,2],[3,4],[5,6]]]}', {"int_tensor": DT_INT32})
    for result in (named, unnamed):
        assert result["int_tensor"].shape == (1, 3, 2)
        assert result["int_tensor"].ravel().tolist() == [1, 2, 3, 4, 5, 6]
    assert parse_predict_request(b'{"inputs": [1]}').row_format is False


def test_columnar_multiple_tensors():
    body = """{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": ["foo", "bar"],
                          "bin_tensor": {"b64": "aGVsbG8="}, "ignored": 1}}"""
    result = tensors(body, {"int_tensor": DT_INT32, "str_tensor": DT_STRING, "bin_tensor": DT_STRING})
    assert set(result) == {"int_tensor", "str_tensor", "bin_tensor"}
    assert result["str_tensor"].tolist() == [b"foo", b"bar"]
    assert result["bin_tensor"].shape == () and result["bin_tensor"].item() == b"hello"


def test_columnar_scalar():
    result = tensors('{"inputs": 3.5}', {"x": DT_FLOAT})
    assert result["x"].shape == () and result["x"].item() == 3.5


def test_deep_nesting_well_formed():
    depth = 40
    body = '{"instances": [' + "[" * depth + "1.5" + "]" * depth + "]}"
    result = tensors(body, {"x": DT_FLOAT})
    assert result["x"].shape == (1,) * (depth + 1)
    assert result["x"].item() == 1.5


def test_empty_inner_lists():
    assert tensors('{"instances": [[], []]}', {"x": DT_FLOAT})["x"].shape == (2, 0)


def test_small_int_types_wrap_like_tensorflow():
    assert tensors('{"instances": [300, -1]}', {"x": DT_UINT8})["x"].tolist() == [44, 255]
    assert tensors('{"instances": [200]}', {"x": DT_INT8})["x"].tolist() == [-56]


def test_64_bit_and_bool_types():
    assert tensors('{"instances": [18446744073709551615]}', {"x": DT_UINT64})["x"].tolist() == [2**64 - 1]
    assert tensors('{"instances": [-9223372036854775808]}', {"x": DT_INT64})["x"].tolist() == [-(2**63)]
    assert tensors('{"instances": [true, false]}', {"x": DT_BOOL})["x"].tolist() == [True, False]


def test_underflow_becomes_zero_and_infinity_is_kept():
    result = tensors('{"instances": [1e-50, -1e-50, Infinity, -Infinity, 1e-400]}', {"x": DT_FLOAT})
    assert result["x"].tolist() == [0.0, -0.0, math.inf, -math.inf, 0.0]


def test_float_rounding_matches_double_to_float_cast():
    result = tensors('{"instances": [[0.1, 16777215, 3.4028234663852886e38]]}', {"x": DT_FLOAT})
    np.testing.assert_array_equal(result["x"], np.array([[0.1, 16777215, 3.4028234663852886e38]], np.float32))


def test_rapidjson_only_tokens_are_accepted():
    result = tensors('{"instances": [Inf, -Inf, -NaN, NaN]}', {"x": DT_DOUBLE})
    assert result["x"][0] == math.inf and result["x"][1] == -math.inf
    assert math.isnan(result["x"][2]) and math.isnan(result["x"][3])


def test_invalid_utf8_strings_keep_their_bytes():
    result = tensors(b'{"instances": ["\xff\xfeab"]}', {"x": DT_STRING})
    assert result["x"].tolist() == [b"\xff\xfeab"]


def test_unicode_escapes_and_surrogate_pairs():
    result = tensors('{"instances": ["\\u00e9\\ud83d\\ude00\\n"]}', {"x": DT_STRING})
    assert result["x"].tolist() == ["é😀\n".encode()]


# ----------------------------------------------------------------------------------------------------
# Request errors: §1.8 catalogue and json_tensor_test.cc error cases (exact texts)
# ----------------------------------------------------------------------------------------------------

FLOAT_X = {"x": DT_FLOAT}
INT_DEFAULT = {"default": DT_INT32}
TWO_INPUTS = {"int_tensor": DT_INT32, "str_tensor": DT_STRING}
FAILED_0 = "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
FAILED_2 = "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: "

REQUEST_ERRORS = [
    # (body, input dtypes, code, exact message)
    (b"", FLOAT_X, "INVALID_ARGUMENT", "JSON Parse error: The document is empty"),
    (b"  \n", FLOAT_X, "INVALID_ARGUMENT", "JSON Parse error: The document is empty. at offset: 3"),
    (b"\x00{}", FLOAT_X, "INVALID_ARGUMENT", "JSON Parse error: The document is empty. at offset: 0"),
    (b"instances = [1, 2]", FLOAT_X, "INVALID_ARGUMENT", "JSON Parse error: Invalid value. at offset: 0"),
    (
        b'{"instances": [1, 2',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Missing a comma or ']' after an array element. at offset: 19",
    ),
    (b'{"instances": [1,]}', FLOAT_X, "INVALID_ARGUMENT", "JSON Parse error: Invalid value. at offset: 17"),
    (
        b'{"instances" [1]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Missing a colon after a name of object member. at offset: 13",
    ),
    (
        b"{instances: [1]}",
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Missing a name for object member. at offset: 1",
    ),
    (
        b'{"instances": [1] "x": 1}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Missing a comma or '}' after an object member. at offset: 18",
    ),
    (b'{"instances": [nul]}', FLOAT_X, "INVALID_ARGUMENT", "JSON Parse error: Invalid value. at offset: 18"),
    (
        b'{"instances": [Infinit]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Invalid value. at offset: 22",
    ),
    (
        b'{"instances": [1.]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Miss fraction part in number. at offset: 17",
    ),
    (
        b'{"instances": [1e]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Miss exponent in number. at offset: 17",
    ),
    (
        b'{"instances": [1e309]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Number too big to be stored in double. at offset: 15",
    ),
    (
        b'{"instances": ["a\\x"]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Invalid escape character in string. at offset: 17",
    ),
    (
        b'{"instances": ["\\u12G4"]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Incorrect hex digit after \\u escape in string. at offset: 16",
    ),
    (
        b'{"instances": ["\\ud800"]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: The surrogate pair in string is invalid. at offset: 16",
    ),
    (
        b'{"instances": ["a\tb"]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Invalid encoding in string. at offset: 17",
    ),
    (
        b'{"instances": ["ab',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Parse error: Missing a closing quotation mark in string. at offset: 18",
    ),
    (b"[1, 2]", FLOAT_X, "INVALID_ARGUMENT", "JSON Value: [\n    1,\n    2\n] Is not object"),
    (b"1.5", FLOAT_X, "INVALID_ARGUMENT", "JSON Value: 1.5 Is not object"),
    (
        b'{"signature_name": 100, "instances": [1]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        'JSON Value: {\n    "signature_name": 100,\n    "instances": [\n        1\n    ]\n} '
        "not formatted correctly. 'signature_name' key must be a string value.",
    ),
    (
        b'{"instances": [[1,2]], "inputs": [[1,2]]}',
        INT_DEFAULT,
        "INVALID_ARGUMENT",
        'JSON Value: {\n    "instances": [\n        [\n            1,\n            2\n        ]\n    ],\n'
        '    "inputs": [\n        [\n            1,\n            2\n        ]\n    ]\n} '
        "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
    ),
    (
        b'{"instances": {"x": 1}}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        'JSON Value: {\n    "instances": {\n        "x": 1\n    }\n} Excepting \'instances\' to be an list/array',
    ),
    (
        b'{"instances": []}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array",
    ),
    (b'{"signature_name": "x"}', FLOAT_X, "INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key"),
    (
        b'{"instances": [[1,2],[3,4],[5,6,7]]}',
        INT_DEFAULT,
        "INVALID_ARGUMENT",
        FAILED_2 + "Expecting tensor size: 2 but got: 3",
    ),
    (
        b'{"instances": [[1,2],[3,4],[[5,6]]]}',
        INT_DEFAULT,
        "INVALID_ARGUMENT",
        FAILED_2 + "Expecting shape [2] but got: [1,2]",
    ),
    (
        b'{"instances": [1, [1]]}',
        INT_DEFAULT,
        "INVALID_ARGUMENT",
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape [] but got: [1]",
    ),
    (
        b'{"instances": [[1, [1]]]}',
        INT_DEFAULT,
        "INVALID_ARGUMENT",
        FAILED_0 + "Encountered list at unexpected level: 1 expected < 1",
    ),
    (
        b'{"instances": [[[1], 2]]}',
        INT_DEFAULT,
        "INVALID_ARGUMENT",
        FAILED_0 + "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
    ),
    (
        b'{"instances": [[[1, 2], [3]]]}',
        INT_DEFAULT,
        "INVALID_ARGUMENT",
        FAILED_0 + "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
    ),
    (
        b'{"instances": [[1,2],["a", "b"]]}',
        INT_DEFAULT,
        "INVALID_ARGUMENT",
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"a\" Type: String "
        "is not of expected type: int32",
    ),
    (
        b'{"instances": ["x","y"]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        FAILED_0 + 'JSON Value: "x" Type: String is not of expected type: float',
    ),
    (
        b'{"instances": [true]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        FAILED_0 + "JSON Value: true Type: True is not of expected type: float",
    ),
    (
        b'{"instances": [null]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        FAILED_0 + "JSON Value: null Type: Null is not of expected type: float",
    ),
    (
        b'{"instances": [1.0]}',
        INT_DEFAULT,
        "INVALID_ARGUMENT",
        FAILED_0 + "JSON Value: 1.0 Type: Number is not of expected type: int32",
    ),
    (
        b'{"instances": [2147483648]}',
        INT_DEFAULT,
        "INVALID_ARGUMENT",
        FAILED_0 + "JSON Value: 2147483648 Type: Number is not of expected type: int32",
    ),
    (
        b'{"instances": [-1]}',
        {"x": DT_UINT64},
        "INVALID_ARGUMENT",
        FAILED_0 + "JSON Value: -1 Type: Number is not of expected type: uint64",
    ),
    (
        b'{"instances": [{"a": 1}]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "Failed to process element: 0 key: a of 'instances' list. Error: INVALID_ARGUMENT: "
        "JSON object: does not have named input: a",
    ),
    (
        b'{"instances": [[{"a": 1}]]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        FAILED_0 + 'JSON Value: {\n    "a": 1\n} Type: Object is not of expected type: float',
    ),
    (
        b'{"instances": [[{"a": 1}]]}',
        {"x": DT_STRING},
        "INVALID_ARGUMENT",
        FAILED_0 + 'JSON Value: {\n    "a": 1\n} not formatted correctly for base64 data',
    ),
    (
        b'{"instances": [{"b64": "@@@"}]}',
        {"x": DT_STRING},
        "INVALID_ARGUMENT",
        FAILED_0 + "Unable to base64 decode",
    ),
    (
        b'{"instances": [1.7976931348623157e308]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        FAILED_0 + "Cannot convert JSON value: 1.7976931348623157e+308 to float without loss of precision.",
    ),
    (
        b'{"instances": [16777217]}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        FAILED_0 + "Cannot convert JSON value: 16777217 to float without loss of precision.",
    ),
    (
        b'{"instances": [9007199254740993]}',
        {"x": DT_DOUBLE},
        "INVALID_ARGUMENT",
        FAILED_0 + "Cannot convert JSON value: 9007199254740993 to double without loss of precision.",
    ),
    (
        b'{"inputs": 1.7976931348623157e308}',
        FLOAT_X,
        "INVALID_ARGUMENT",
        "Cannot convert JSON value: 1.7976931348623157e+308 to float without loss of precision.",
    ),
    # Half precision: 501 in columnar format; row format wraps the cause into a 400.
    (b'{"inputs": [1.5]}', {"x": DT_HALF}, "UNIMPLEMENTED", "Conversion of JSON Value: 1.5 to type: half"),
    (
        b'{"inputs": [1]}',
        {"x": DT_BFLOAT16},
        "UNIMPLEMENTED",
        "Conversion of JSON Value: 1 to type: bfloat16",
    ),
    (
        b'{"instances": [1.5]}',
        {"x": DT_HALF},
        "INVALID_ARGUMENT",
        "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of JSON Value: 1.5 to type: half",
    ),
    # Multiple inputs.
    (
        b'{"instances": [[1, 2]]}',
        TWO_INPUTS,
        "INVALID_ARGUMENT",
        "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
        "tensorinfo_map",
    ),
    (
        b'{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},'
        b' {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}',
        TWO_INPUTS,
        "INVALID_ARGUMENT",
        "Failed to process element: 1 key: int_tensor of 'instances' list. Error: INVALID_ARGUMENT: "
        "Expecting shape [3,2] but got: [1,3,2]",
    ),
    (
        b'{"instances": [{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},'
        b' {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}',
        TWO_INPUTS,
        "INVALID_ARGUMENT",
        "Failed to process element: 1 key: int_tensor of 'instances' list. Error: INVALID_ARGUMENT: "
        "Expecting tensor size: 8 but got: 6",
    ),
    (
        b'{"instances": [{"int_tensor": [[1,2]], "str_tensor": ["foo"]}, [1, 20, 30]]}',
        TWO_INPUTS,
        "INVALID_ARGUMENT",
        "Expecting object but got list at item 1 of input list",
    ),
    (
        b'{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}',
        {"str_tensor": DT_STRING},
        "INVALID_ARGUMENT",
        "Expecting value/list but got object at item 1 of input list",
    ),
    (
        b'{"instances": [{"int_tensor": 1}]}',
        TWO_INPUTS,
        "INVALID_ARGUMENT",
        "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"int_tensor\": 1\n} "
        "keys must be equal to: int_tensor,str_tensor",
    ),
    (
        b'{"inputs": [1]}',
        TWO_INPUTS,
        "INVALID_ARGUMENT",
        "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
        "tensorinfo_map",
    ),
    (
        b'{"inputs": {"int_tensor": 1}}',
        TWO_INPUTS,
        "INVALID_ARGUMENT",
        "Missing named input: str_tensor in 'inputs' object.",
    ),
    (b'{"inputs": [1]}', {}, "INVALID_ARGUMENT", "Failed to get input map for signature: DEFAULT"),
]


@pytest.mark.parametrize(("body", "dtypes", "code", "message"), REQUEST_ERRORS)
def test_request_error_catalogue(body, dtypes, code, message):
    error = predict_error(body, dtypes)
    assert (error.code, error.message) == (code, message)


def test_parse_errors_are_raised_by_parse_but_key_errors_wait_for_the_signature():
    with pytest.raises(ServingError, match="Is not object"):
        parse_predict_request(b"[1]")
    request = parse_predict_request(b"{}")
    assert request.deferred_error is not None
    with pytest.raises(ServingError, match="Missing 'inputs' or 'instances' key"):
        tensors_from_predict_request(request, {"x": DT_FLOAT})


def test_echoed_values_are_truncated_to_256_bytes():
    body = json.dumps({"signature_name": 1, "instances": [[0.5] * 500]}).encode()
    message = predict_error(body).message
    prefix, suffix = "JSON Value: ", " not formatted correctly. 'signature_name' key must be a string value."
    assert message.startswith(prefix) and message.endswith(suffix)
    assert len(message[len(prefix) : -len(suffix)].encode()) == 256


def test_echo_stops_at_nested_non_finite_numbers_like_rapidjson():
    # rapidjson's Writer refuses NaN inside a document, which ends the echo there.
    message = predict_error(b'{"signature_name": 1, "instances": [NaN, 1]}').message
    assert message.startswith(
        'JSON Value: {\n    "signature_name": 1,\n    "instances": [\n         not formatted'
    )


def test_deep_nesting_malformed_is_a_parse_error_not_a_crash():
    depth = 100_000
    error = predict_error(b'{"instances": ' + b"[" * depth)
    assert error.message == f"JSON Parse error: Invalid value. at offset: {14 + depth}"


def test_very_deep_well_formed_nesting_is_rejected_cleanly():
    depth = 5_000
    error = predict_error(b'{"instances": [' + b"[" * depth + b"1" + b"]" * depth + b"]}")
    assert error.message == "tensor parsing error: x"


# ----------------------------------------------------------------------------------------------------
# Float printing (WriteDecimal)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "dtype", "text"),
    [
        (9000000, DT_FLOAT, "9e+06"),
        (999999, DT_FLOAT, "999999.0"),
        (0.5, DT_FLOAT, "0.5"),
        (0.0003, DT_FLOAT, "0.0003"),
        (0.00003, DT_FLOAT, "3e-05"),
        (555557.5, DT_FLOAT, "555557.5"),
        (3, DT_FLOAT, "3.0"),
        (2.5, DT_FLOAT, "2.5"),
        (0.1, DT_FLOAT, "0.1"),
        (1 / 3, DT_FLOAT, "0.333333343"),
        (1 / 3, DT_DOUBLE, "0.33333333333333331"),
        (0.1 + 0.2, DT_DOUBLE, "0.30000000000000004"),
        (1e100, DT_DOUBLE, "1e+100"),
        (123456789, DT_DOUBLE, "123456789.0"),
        (16777216, DT_FLOAT, "16777216.0"),
        (-0.0, DT_FLOAT, "0.0"),
        (0.0, DT_DOUBLE, "0.0"),
        (-2.25, DT_DOUBLE, "-2.25"),
        (math.nan, DT_FLOAT, "NaN"),
        (math.inf, DT_FLOAT, "Infinity"),
        (-math.inf, DT_DOUBLE, "-Infinity"),
        (1e39, DT_FLOAT, "Infinity"),
    ],
)
def test_format_float(value, dtype, text):
    assert format_float(value, dtype) == text


@settings(max_examples=300, deadline=None)
@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float_text_round_trips_to_the_same_float32(value):
    text = format_float(value, DT_FLOAT)
    assert np.float32(float(text)) == np.float32(value)
    assert "." in text or "e" in text


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_double_text_round_trips(value):
    assert float(format_float(value, DT_DOUBLE)) == value


# ----------------------------------------------------------------------------------------------------
# Predict responses (MakeJsonFromTensors)
# ----------------------------------------------------------------------------------------------------

INT_2x3x2 = np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], dtype=np.int32)


def test_single_tensor_row_and_columnar():
    row = predict_response_json({"int_tensor": INT_2x3x2}, {"int_tensor": DT_INT32}, True)
    assert json.loads(row) == {"predictions": INT_2x3x2.tolist()}
    columnar = predict_response_json({"int_tensor": INT_2x3x2}, {"int_tensor": DT_INT32}, False)
    assert json.loads(columnar) == {"outputs": INT_2x3x2.tolist()}


def test_rapidjson_pretty_layout():
    out = {"y": np.array([[2.5, 3.0], [3.5, 4.0]], np.float32)}
    assert predict_response_json(out, {"y": DT_FLOAT}, True) == (
        b'{\n    "predictions": [[2.5, 3.0], [3.5, 4.0]\n    ]\n}'
    )
    assert predict_response_json({"y": np.array([3.5, 4.0], np.float32)}, {"y": DT_FLOAT}, False) == (
        b'{\n    "outputs": [\n        3.5,\n        4.0\n    ]\n}'
    )
    assert predict_response_json({"y": np.array([3.0, 3.5, 4.0], np.float32)}, {"y": DT_FLOAT}, True) == (
        b'{\n    "predictions": [3.0, 3.5, 4.0\n    ]\n}'
    )


def test_scalar_per_instance_row_format():
    out = {"int_tensor": np.array([1, 2, 3, 4, 5], np.int32)}
    assert json.loads(predict_response_json(out, {}, True)) == {"predictions": [1, 2, 3, 4, 5]}
    assert json.loads(predict_response_json(out, {}, False)) == {"outputs": [1, 2, 3, 4, 5]}


def test_bytes_tensor_is_base64():
    strings = np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object)
    body = predict_response_json({"str_tensor_bytes": strings}, {"str_tensor_bytes": DT_STRING}, True)
    assert json.loads(body) == {
        "predictions": [
            [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
        ]
    }


def test_six_digit_precision_output():
    values = np.array([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]], np.float32)
    body = predict_response_json({"float_tensor": values}, {"float_tensor": DT_FLOAT}, True)
    assert body == b'{\n    "predictions": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]\n    ]\n}'


def test_non_finite_output_is_bare_tokens():
    values = np.array([[math.nan, math.inf], [3, -math.inf]], np.float32)
    body = predict_response_json({"float_tensor": values}, {"float_tensor": DT_FLOAT}, True)
    assert body == b'{\n    "predictions": [[NaN, Infinity], [3.0, -Infinity]\n    ]\n}'


def test_multiple_named_outputs():
    outputs = {
        "double_scalar_tensor": np.array([8.0, 9.0]),
        "float_tensor": np.array([[1.0], [2.0]], np.float32),
        "int_tensor": INT_2x3x2,
        "str_tensor": np.array([[b"foo", b"bar"], [b"baz", b"bat"]], dtype=object),
        "str_tensor_bytes": np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object),
    }
    dtypes = {
        "double_scalar_tensor": DT_DOUBLE,
        "float_tensor": DT_FLOAT,
        "int_tensor": DT_INT32,
        "str_tensor": DT_STRING,
        "str_tensor_bytes": DT_STRING,
    }
    row = json.loads(predict_response_json(outputs, dtypes, True))
    assert row == {
        "predictions": [
            {
                "double_scalar_tensor": 8.0,
                "float_tensor": [1.0],
                "int_tensor": [[1, 2], [3, 4], [5, 6]],
                "str_tensor": ["foo", "bar"],
                "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
            },
            {
                "double_scalar_tensor": 9.0,
                "float_tensor": [2.0],
                "int_tensor": [[7, 8], [9, 0], [1, 2]],
                "str_tensor": ["baz", "bat"],
                "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            },
        ]
    }
    columnar = json.loads(predict_response_json(outputs, dtypes, False))
    assert columnar == {
        "outputs": {
            "double_scalar_tensor": [8.0, 9.0],
            "float_tensor": [[1.0], [2.0]],
            "int_tensor": INT_2x3x2.tolist(),
            "str_tensor": [["foo", "bar"], ["baz", "bat"]],
            "str_tensor_bytes": [
                [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
            ],
        }
    }


def test_output_layout_matches_generic_pretty_writer():
    """The hand-assembled layouts equal rapidjson's PrettyWriter run token by token."""
    outputs = {
        "a": np.array([[1.5, 2.0], [3.0, 4.0]], np.float32),
        "b_bytes": np.array([b"x", b"y"], dtype=object),
    }
    for row_format in (True, False):
        writer = _PrettyWriter()
        writer.start(False)
        writer.raw(b'"predictions"' if row_format else b'"outputs"')
        if row_format:
            writer.start(True)
            for item in range(2):
                writer.start(False)
                writer.single_line = True
                writer.raw(b'"a"')
                writer.start(True)
                for value in outputs["a"][item]:
                    writer.raw(format_float(value, DT_FLOAT).encode())
                writer.end()
                writer.raw(b'"b_bytes"')
                writer.start(False)
                writer.raw(b'"b64"')
                writer.raw(b'"' + base64.b64encode(outputs["b_bytes"][item]) + b'"')
                writer.end()
                writer.single_line = False
                writer.end()
            writer.end()
        else:
            writer.start(False)
            writer.raw(b'"a"')
            writer.start(True)
            for row in outputs["a"]:
                writer.start(True)
                for value in row:
                    writer.raw(format_float(value, DT_FLOAT).encode())
                writer.end()
            writer.end()
            writer.raw(b'"b_bytes"')
            writer.start(True)
            for raw in outputs["b_bytes"]:
                writer.start(False)
                writer.raw(b'"b64"')
                writer.raw(b'"' + base64.b64encode(raw) + b'"')
                writer.end()
            writer.end()
            writer.end()
        writer.end()
        assert (
            predict_response_json(outputs, {"a": DT_FLOAT, "b_bytes": DT_STRING}, row_format)
            == writer.getvalue()
        )


def test_string_output_escaping():
    body = predict_response_json({"s": np.array([b'a"b\\c\n\x01\xff'], dtype=object)}, {"s": DT_STRING}, True)
    assert body == b'{\n    "predictions": ["a\\"b\\\\c\\n\\u0001\xff"\n    ]\n}'


def test_zero_batch_outputs():
    single = {"int_tensor": np.zeros((0, 2), np.int32)}
    assert predict_response_json(single, {}, True) == b'{\n    "predictions": []\n}'
    several = {
        "str_tensor": np.zeros((0, 1, 2), dtype=object),
        "float_tensor": np.zeros((0, 3, 4), np.float32),
    }
    assert json.loads(predict_response_json(several, {}, True)) == {"predictions": []}


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({}, "Cannot convert empty tensor map to JSON"),
        ({"tensor": np.array(1, np.int32)}, "Tensor name: tensor has no shape information "),
        (
            {"int_tensor": np.zeros((2, 3), np.int32), "str_tensor": np.zeros((1, 3), dtype=object)},
            "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2",
        ),
        (
            {"int_tensor": np.zeros((0, 2), np.int32), "str_tensor": np.zeros((1, 2), dtype=object)},
            "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 0",
        ),
        (
            {"tensor": np.array([1 + 2j], np.complex64)},
            "Failed to write JSON value for tensor type: complex64",
        ),
    ],
)
def test_output_errors(outputs, message):
    with pytest.raises(ServingError) as caught:
        predict_response_json(outputs, {}, True)
    assert (caught.value.code, caught.value.message) == ("INVALID_ARGUMENT", message)


def test_columnar_scalar_output_is_allowed():
    body = predict_response_json({"y": np.array(2.5, np.float32)}, {"y": DT_FLOAT}, False)
    assert body == b'{\n    "outputs": 2.5\n}'


# ----------------------------------------------------------------------------------------------------
# Classify / Regress
# ----------------------------------------------------------------------------------------------------


def feature_values(feature):
    kind = feature.WhichOneof("kind")
    return kind, list(getattr(feature, kind).value) if kind else []


@pytest.mark.parametrize("method", ["classify", "regress"])
def test_classify_regress_request_without_context(method):
    body = b"""{"examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0], "age": 20},
                             {"names": ["baz"], "ratings": 6.0}]}"""
    signature, request_input = codec.parse_classify_regress_request(body, method)
    assert signature == ""
    assert request_input.WhichOneof("kind") == "example_list"
    first, second = request_input.example_list.examples
    assert feature_values(first.features.feature["names"]) == ("bytes_list", [b"foo", b"bar"])
    assert feature_values(first.features.feature["ratings"]) == ("float_list", [8.0, 9.0])
    assert feature_values(first.features.feature["age"]) == ("int64_list", [20])
    assert feature_values(second.features.feature["ratings"]) == ("float_list", [6.0])


def test_classify_request_with_context_and_signature():
    body = b"""{"signature_name": "custom_signture", "context": {"query": "pizza", "location": ["sfo"]},
      "examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20},
                   {"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0, "intboolmix": [1, true, false]},
                   {"names": "bar", "ratings": -Infinity}]}"""
    signature, request_input = codec.parse_classify_regress_request(body, "classify")
    assert signature == "custom_signture"
    listed = request_input.example_list_with_context
    assert feature_values(listed.context.features.feature["query"]) == ("bytes_list", [b"pizza"])
    assert feature_values(listed.context.features.feature["location"]) == ("bytes_list", [b"sfo"])
    first, second, third = listed.examples
    kind, ratings = feature_values(first.features.feature["ratings"])
    assert (
        kind == "float_list"
        and ratings[:2] == [8.0, 9.0]
        and math.isnan(ratings[2])
        and ratings[3] == math.inf
    )
    assert feature_values(second.features.feature["names"]) == ("bytes_list", [b"baz", b"hello"])
    assert feature_values(second.features.feature["intboolmix"]) == ("int64_list", [1, 1, 0])
    assert feature_values(third.features.feature["ratings"]) == ("float_list", [-math.inf])


CLASSIFY_ERRORS = [
    (
        b'{"signature_name": ["hello"], "examples": [{"names": ["foo", "bar"]}]}',
        "'signature_name' key must be a string value.",
    ),
    (b'{"context": [{"names": ["foo", "bar"]}]}', "Example must be JSON object but got JSON Array"),
    (b'{"examples": {"names": ["foo", "bar"]}}', "Expecting 'examples' value to be an list/array"),
    (b'{"examples": [[{"names": ["foo", "bar"]}]]}', "Example must be JSON object but got JSON Array"),
    (b'{"examples": [{"names": [10, null]}]}', "Feature: names has element with unexpected JSON type: Null"),
    (
        b'{"examples": [{"names": [10, 10.0]}]}',
        "Unexpected element type in feature: names expecting type: int64",
    ),
    (
        b'{"examples": [{"names": [1.5, "a"]}]}',
        "Unexpected element type in feature: names expecting type: float",
    ),
    (
        b'{"examples": [{"names": [10, {"test": 10}]}]}',
        "Feature: names has element with unexpected JSON type: Object",
    ),
    (b'{"examples": [{"names": [[10], 20]}]}', "Feature: names has element with unexpected JSON type: Array"),
    (
        b'{"examples": [{"names": [20, 18446744073709551603]}]}',
        "Feature: names has uint64 element. Only int64 is supported.",
    ),
    (
        b'{"examples": [{"names": 1.7976931348623157e308}]}',
        "Cannot convert JSON value: 1.7976931348623157e+308 to float without loss of precision.",
    ),
    (b'{"examples": []}', "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array"),
    (
        b'{"x": 1}',
        "JSON Value: {\n    \"x\": 1\n} When method is classify, key 'examples' is expected and was not found",
    ),
    (b"", "JSON Parse error: The document is empty"),
]


@pytest.mark.parametrize(("body", "message"), CLASSIFY_ERRORS)
@pytest.mark.parametrize("method", ["classify", "regress"])
def test_classify_regress_request_errors(body, message, method):
    with pytest.raises(ServingError) as caught:
        codec.parse_classify_regress_request(body, method)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.message.endswith(message)


def test_classification_result_json():
    from tensorflow_serving.apis import classification_pb2

    result = classification_pb2.ClassificationResult()
    for scores in ((0.2, 0.7, 0.1), (0.7, 0.1, 0.2)):
        classes = result.classifications.add()
        for label, score in zip(("car", "bike", "bus"), scores, strict=True):
            classes.classes.add(label=label, score=score)
    body = codec.classify_response_json(result)
    assert body == (
        b'{\n    "results": [[["car", 0.2], ["bike", 0.7], ["bus", 0.1]], '
        b'[["car", 0.7], ["bike", 0.1], ["bus", 0.2]]\n    ]\n}'
    )
    unlabeled = classification_pb2.ClassificationResult()
    unlabeled.classifications.add().classes.add(score=3.0)
    assert json.loads(codec.classify_response_json(unlabeled)) == {"results": [[["", 3.0]]]}


def test_regression_result_json_including_non_finite():
    from tensorflow_serving.apis import regression_pb2

    result = regression_pb2.RegressionResult()
    for value in (0.2, math.inf, 1.0, -math.inf, math.nan):
        result.regressions.add(value=value)
    assert codec.regress_response_json(result) == b'{\n    "results": [0.2, Infinity, 1.0, -Infinity, NaN]\n}'


def test_empty_results_are_errors():
    from tensorflow_serving.apis import classification_pb2, regression_pb2

    with pytest.raises(ServingError, match="Cannot convert empty ClassificationResults to JSON"):
        codec.classify_response_json(classification_pb2.ClassificationResult())
    with pytest.raises(ServingError, match="Cannot convert empty RegressionResults to JSON"):
        codec.regress_response_json(regression_pb2.RegressionResult())


# ----------------------------------------------------------------------------------------------------
# Error, status and metadata JSON
# ----------------------------------------------------------------------------------------------------


def test_error_json():
    assert json.loads(error_json('Bad key: "key"')) == {"error": 'Bad key: "key"'}
    assert json.loads(error_json("Bad key: 'key'")) == {"error": "Bad key: 'key'"}
    assert error_json("x") == b'{\n    "error": "x"\n}'


def test_status_json_shape():
    from tensorflow_serving.apis import get_model_status_pb2

    response = get_model_status_pb2.GetModelStatusResponse()
    response.model_version_status.add(version=10, state=get_model_status_pb2.ModelVersionStatus.END)
    response.model_version_status.add(version=9, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    assert json.loads(codec.status_json(response)) == {
        "model_version_status": [
            {"version": "10", "state": "END", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "9", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }


def test_metadata_json_shape():
    from tensorflow.core.protobuf import meta_graph_pb2

    signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    signature.inputs["x"].name = "x:0"
    signature.inputs["x"].dtype = DT_FLOAT
    signature.inputs["x"].tensor_shape.dim.add(size=-1)
    signature.inputs["x"].tensor_shape.dim.add(size=1)
    signature.outputs["y"].name = "y:0"
    signature.outputs["y"].dtype = DT_FLOAT
    document = json.loads(codec.metadata_json("half", 123, {"serving_default": signature}))
    assert document["model_spec"] == {"name": "half", "signature_name": "", "version": "123"}
    served = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert served["method_name"] == "tensorflow/serving/predict"
    assert served["defaults"] == {}
    assert served["inputs"]["x"] == {
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
            "unknown_rank": False,
        },
        "name": "x:0",
    }


# ----------------------------------------------------------------------------------------------------
# Robustness
# ----------------------------------------------------------------------------------------------------

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5) | st.just({"b64": "aGk="}),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)


def encode_jsonish(value) -> bytes:
    return json.dumps(value).encode()


BODIES = st.one_of(
    st.binary(max_size=80),
    st.builds(
        lambda key, payload, tail: b'{"' + key.encode() + b'": ' + encode_jsonish(payload) + tail,
        st.sampled_from(["instances", "inputs", "signature_name"]),
        JSONISH,
        st.sampled_from([b"}", b"", b",", b"]}", b"} x", b', "inputs": 1}']),
    ),
)
DTYPES = st.sampled_from(
    [
        {"x": DT_FLOAT},
        {"x": DT_DOUBLE},
        {"x": DT_INT64},
        {"x": DT_STRING},
        {"x": DT_BOOL},
        {"x": DT_HALF},
        {"a": DT_FLOAT, "b": DT_STRING},
    ]
)


@settings(max_examples=400, deadline=None)
@given(BODIES, DTYPES)
def test_any_body_either_decodes_or_raises_serving_error(body, dtypes):
    with contextlib.suppress(ServingError):
        tensors(body, dtypes)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.floats(width=32), min_size=1, max_size=6), min_size=1, max_size=4).filter(
        lambda rows: len({len(row) for row in rows}) == 1
    )
)
def test_fast_float_path_equals_general_path(rows):
    body = json.dumps({"instances": rows}).encode()
    fast = tensors(body, {"x": DT_FLOAT})["x"]
    general = _to_numpy("x", _tensors_from_instances(rows, {"x": DT_FLOAT})["x"])
    np.testing.assert_array_equal(fast, general)
    assert fast.dtype == general.dtype == np.float32


FINITE_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(FINITE_JSONISH, st.sampled_from([None, 1]))
def test_rapidjson_reader_agrees_with_python_json_on_valid_documents(value, indent):
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    assert _RapidJsonReader(text.encode()).parse() == json.loads(text)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=4),
    st.sampled_from([DT_FLOAT, DT_DOUBLE]),
    st.booleans(),
    st.data(),
)
def test_float_outputs_read_back_exactly(batch, width, dtype, row_format, data):
    numpy_type = np.float32 if dtype == DT_FLOAT else np.float64
    values = data.draw(
        st.lists(
            st.floats(width=32 if dtype == DT_FLOAT else 64, allow_nan=False, allow_infinity=False),
            min_size=batch * width,
            max_size=batch * width,
        )
    )
    array = np.array(values, dtype=numpy_type).reshape(batch, width)
    document = json.loads(predict_response_json({"y": array}, {"y": dtype}, row_format))
    read_back = np.array(document["predictions" if row_format else "outputs"], dtype=numpy_type)
    np.testing.assert_array_equal(read_back.reshape(batch, width), array)


# --- the vectorised paths against the exact ones ----------------------------------------------------------------

FAST_DTYPES = st.sampled_from([DT_FLOAT, DT_DOUBLE, DT_INT32, DT_INT64])
LEAVES = (
    st.integers(min_value=-(2**65), max_value=2**65)
    | st.floats()
    | st.sampled_from(
        [0, 1, -1, 2**24 - 1, 2**24, 2**24 + 1, 2**31 - 1, 2**31, 2**53, 2**63 - 1, 2**63, 1e39]
    )
    | st.booleans()
)


def dense_payload(leaves, max_rank: int = 4):
    """A dense nested list (every level one fixed size), as clients send images and rows."""
    return st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=max_rank).flatmap(
        lambda shape: st.lists(leaves, min_size=math.prod(shape), max_size=math.prod(shape)).map(
            lambda flat: np.array(flat, dtype=object).reshape(shape).tolist()
        )
    )


def exact_tensor(payload, dtype: int, row_format: bool):
    pending = (_tensors_from_instances if row_format else _tensors_from_inputs)(payload, {"x": dtype})["x"]
    return _to_numpy("x", pending)


@settings(max_examples=400, deadline=None)
@given(dense_payload(LEAVES) | JSONISH, FAST_DTYPES, st.booleans())
def test_numpy_fast_path_takes_only_payloads_the_exact_path_accepts_and_agrees(payload, dtype, row_format):
    text = json.dumps(payload)
    fast = _fast_numeric(payload, dtype, "true" in text or "false" in text)
    if fast is None:
        return
    exact = exact_tensor(payload, dtype, row_format)  # must not raise: the fast path took a valid payload
    assert fast.dtype == exact.dtype and fast.shape == exact.shape
    np.testing.assert_array_equal(fast, exact)


@settings(max_examples=200, deadline=None)
@given(
    dense_payload(st.floats(-1e6, 1e6, width=32) | st.integers(-(2**24) + 1, 2**24 - 1)),
    st.sampled_from([DT_FLOAT, DT_DOUBLE]),
)
def test_numpy_fast_path_serves_nested_number_payloads(payload, dtype):
    body = json.dumps({"instances": payload}).encode()
    assert _fast_numeric(payload, dtype, False) is not None
    np.testing.assert_array_equal(tensors(body, {"x": dtype})["x"], exact_tensor(payload, dtype, True))


def test_numpy_fast_path_leaves_booleans_strings_and_errors_to_the_exact_path():
    assert _fast_numeric([[1.0, 2.0]], DT_FLOAT, True) is None  # a true/false literal somewhere in the body
    assert _fast_numeric([["1.0"]], DT_FLOAT, False) is None
    assert (
        _fast_numeric([[1.0], [2.0, 3.0]], DT_FLOAT, False) is None
    )  # ragged: the exact path words the error
    assert _fast_numeric([[2**24 + 1]], DT_FLOAT, False) is None  # lossy for float: the exact path rejects it
    assert _fast_numeric([[1.5]], DT_INT64, False) is None
    assert _fast_numeric([[]], DT_FLOAT, False) is None


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([DT_FLOAT, DT_DOUBLE]).flatmap(
        lambda dtype: st.tuples(
            st.just(dtype),
            st.lists(st.floats(width=32 if dtype == DT_FLOAT else 64), max_size=80),
        )
    )
)
def test_vectorised_float_text_is_format_float_for_every_value(case):
    dtype, values = case
    array = np.array(values, dtype=np.float32 if dtype == DT_FLOAT else np.float64)
    assert format_floats(array, dtype) == [codec.format_float(v, dtype) for v in array.tolist()]


def test_vectorised_float_text_on_the_edges():
    edges = [
        0.0,
        -0.0,
        math.nan,
        math.inf,
        -math.inf,
        1.0,
        123456.0,
        1234567.0,
        1e-5,
        0.1,
        3.4028235e38,
        1e-45,
    ]
    for dtype, numpy_type in ((DT_FLOAT, np.float32), (DT_DOUBLE, np.float64)):
        array = np.array(edges * 3, dtype=numpy_type)  # long enough for the vectorised branch
        assert format_floats(array, dtype) == [codec.format_float(v, dtype) for v in array.tolist()]
