"""Model status and metadata bodies: the protos printed as protobuf JSON, as TF Serving does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import get_model_status_pb2

# --------------------------------------------------------------------------------------------------
# Status and metadata (http_rest_api_util.cc::ToJsonString)
# --------------------------------------------------------------------------------------------------


def _message_to_json(message: Any, preserve_names: bool) -> str:
    from google.protobuf import json_format

    # protobuf's C++ printer with add_whitespace indents by one space.
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=preserve_names,
        indent=1,
        ensure_ascii=False,
        always_print_fields_with_no_presence=True,
    )


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    """The model status body: the GetModelStatusResponse as protobuf JSON, default fields printed.

    TF Serving always fills each version's ``status``, so an unset one is printed as OK here too."""
    printed = type(response)()
    printed.CopyFrom(response)
    for version_status in printed.model_version_status:
        version_status.status.SetInParent()
    return (_message_to_json(printed, preserve_names=False) + "\n").encode()


def metadata_json(
    model_name: str, version: int, signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
) -> bytes:
    """The metadata body: ``{"model_spec": ..., "metadata": {"signature_def": {"signature_def": ...}}}``
    assembled the way TF Serving concatenates it."""
    from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

    spec = model_pb2.ModelSpec(name=model_name)
    spec.version.value = version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    text = (
        '{\n"model_spec":' + _message_to_json(spec, preserve_names=True) + ",\n"
        '"metadata": {"signature_def": ' + _message_to_json(signature_map, preserve_names=True) + "}\n}\n"
    )
    return text.encode()
