"""Classify / Regress JSON: a request body -> tensorflow_serving ``Input`` of tf.Examples
(FillClassifyRegressRequestFromJson), and results -> response body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.codec.errors import _FLOAT_MAX_EXACT_INT, _FLT_MAX, _INT64_LIMIT, DT_FLOAT, _invalid
from serving.codec.reader import (
    _decode_b64_object,
    _format_error,
    _is_b64_object,
    _lossless,
    _lossy_error,
    _parse_document,
    _signature_name,
)
from serving.codec.writer import _is_rapidjson_double, _json_str, _json_type, _utf8, format_float

if TYPE_CHECKING:  # pragma: no cover
    from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

# --------------------------------------------------------------------------------------------------
# Classify / Regress
# --------------------------------------------------------------------------------------------------

_FEATURE_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def _add_value_to_feature(val: Any, name: str, feature: Any) -> None:
    """AddValueToFeature: JSON scalar -> tf.train.Feature value, one kind per feature."""
    kind = feature.WhichOneof("kind")

    def require(wanted: str) -> None:
        if kind is not None and kind != wanted:
            raise _invalid(
                f"Unexpected element type in feature: {name} expecting type: {_FEATURE_KIND_NAMES[kind]}"
            )

    if val is None or type(val) is list or (type(val) is dict and not _is_b64_object(val)):
        raise _invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(val)}")
    if type(val) is bool:
        require("int64_list")
        feature.int64_list.value.append(1 if val else 0)
    elif type(val) is dict:
        require("bytes_list")
        feature.bytes_list.value.append(_decode_b64_object(val))
    elif type(val) is str:
        require("bytes_list")
        feature.bytes_list.value.append(_utf8(val))
    elif _is_rapidjson_double(val):
        require("float_list")
        if not _lossless(val, _FLOAT_MAX_EXACT_INT, _FLT_MAX):
            raise _lossy_error(val, "float")
        feature.float_list.value.append(float(val))
    else:
        require("int64_list")
        if val >= _INT64_LIMIT:
            raise _invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
        feature.int64_list.value.append(val)


def _fill_example(val: Any, example: Any) -> None:
    """MakeExampleFromJsonObject."""
    if type(val) is not dict:
        raise _invalid(f"Example must be JSON object but got JSON {_json_type(val)}")
    for name, content in val.items():
        feature = example.features.feature[name]
        for item in content if type(content) is list else (content,):
            _add_value_to_feature(item, name, feature)


def parse_classify_regress_request(body: bytes, method: str) -> tuple[str, input_pb2.Input]:
    """FillClassifyRegressRequestFromJson: returns (signature_name or "", Input proto)."""
    if method not in ("classify", "regress"):
        raise ValueError(f"method must be 'classify' or 'regress', got {method!r}")
    from tensorflow_serving.apis import input_pb2

    doc = _parse_document(body)
    signature_name = _signature_name(doc)
    request_input = input_pb2.Input()
    has_context = "context" in doc
    if has_context:
        _fill_example(doc["context"], request_input.example_list_with_context.context)
    if "examples" not in doc:
        # TF Serving says "classify" for both methods.
        raise _format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if type(examples) is not list:
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    target = request_input.example_list_with_context if has_context else request_input.example_list
    for example in examples:
        _fill_example(example, target.examples.add())
    return signature_name, request_input


def classify_response_json(result: classification_pb2.ClassificationResult) -> bytes:
    """``{"results": [[[label, score], ...], ...]}`` (MakeJsonFromClassificationResult)."""
    if not result.classifications:
        raise _invalid("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        pairs = [
            b"[" + _json_str(entry.label) + b", " + format_float(entry.score, DT_FLOAT).encode() + b"]"
            for entry in classifications.classes
        ]
        rows.append(b"[" + b", ".join(pairs) + b"]")
    return b'{\n    "results": [' + b", ".join(rows) + b"\n    ]\n}"


def regress_response_json(result: regression_pb2.RegressionResult) -> bytes:
    """``{"results": [v, ...]}`` (MakeJsonFromRegressionResult)."""
    if not result.regressions:
        raise _invalid("Cannot convert empty RegressionResults to JSON")
    values = b", ".join(format_float(entry.value, DT_FLOAT).encode() for entry in result.regressions)
    return b'{\n    "results": [' + values + b"]\n}"
