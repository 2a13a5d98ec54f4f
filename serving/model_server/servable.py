"""One loaded model version: a SavedModel run through a TF1 Session (`saved_model_servable`), or a
`model.tflite` run through LiteRT (`tflite_servable`); `loading.load_servable` picks one.

Both expose the same small surface: `signatures` (keys and dtypes, computed once at load so the request path
never introspects), `signature_defs` (the MetaGraph's SignatureDefs, for metadata) and `run()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from serving.codec import ServingError

SERVE_TAG = "serve"
PREDICT_METHOD = "tensorflow/serving/predict"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
TFLITE_FILE = "model.tflite"

# tensorflow.error.Code values, in enum order.
ERROR_CODE_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


def error_code_number(name: str) -> int:
    return ERROR_CODE_NAMES.index(name) if name in ERROR_CODE_NAMES else ERROR_CODE_NAMES.index("UNKNOWN")


def serving_error_from_tf(exc: Exception) -> ServingError:
    """Map a TensorFlow / runtime exception to the status TF Serving would return."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, tf.errors.OpError):
        code = ERROR_CODE_NAMES[exc.error_code] if 0 < exc.error_code < len(ERROR_CODE_NAMES) else "UNKNOWN"
        return ServingError(code, exc.message)
    if isinstance(exc, ValueError | TypeError):
        return ServingError(
            "INVALID_ARGUMENT", str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        )
    return ServingError("INTERNAL", f"{type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class Signature:
    name: str
    method_name: str
    input_dtypes: Mapping[str, int]
    output_dtypes: Mapping[str, int]
    has_defaults: bool = False


class Servable:
    """Interface shared by SavedModel and TFLite versions."""

    path: str
    runtime: str
    signatures: Mapping[str, Signature]
    signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]

    def run(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_keys: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError


def read_meta_graph(version_dir: str, tags: set[str]) -> meta_graph_pb2.MetaGraphDef:
    binary = os.path.join(version_dir, SAVED_MODEL_FILES[0])
    saved_model = saved_model_pb2.SavedModel()
    if os.path.exists(binary):
        with open(binary, "rb") as handle:
            saved_model.ParseFromString(handle.read())
    else:
        from google.protobuf import text_format

        with open(os.path.join(version_dir, SAVED_MODEL_FILES[1]), encoding="utf-8") as handle:
            text_format.Parse(handle.read(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == tags:
            return meta_graph
    wanted = " ".join(sorted(tags))
    raise ServingError(
        "NOT_FOUND",
        f"Could not find meta graph def matching supplied tags: {{ {wanted} }}. To inspect available tag-sets in "
        "the SavedModel, please use the SavedModel CLI: `saved_model_cli`",
    )


def has_model_file(version_dir: str, prefer_tflite: bool) -> bool:
    names = SAVED_MODEL_FILES + ((TFLITE_FILE,) if prefer_tflite else ())
    return any(os.path.isfile(os.path.join(version_dir, name)) for name in names)
