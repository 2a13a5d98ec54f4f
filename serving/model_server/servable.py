"""One loaded model version: a SavedModel run through TensorFlow, or a `model.tflite` run through LiteRT.

Both expose the same small surface: `signatures` (keys and dtypes, computed once at load so the request path
never introspects), `signature_defs` (the MetaGraph's SignatureDefs, for metadata) and `run()`.
"""

from __future__ import annotations

import os
import threading
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


def _read_meta_graph(version_dir: str, tags: set[str]) -> meta_graph_pb2.MetaGraphDef:
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


class SavedModelServable(Servable):
    runtime = "TF1"

    def __init__(self, version_dir: str, tags: Sequence[str] = (SERVE_TAG,)):
        self.path = version_dir
        meta_graph = _read_meta_graph(version_dir, set(tags))
        self.signature_defs = dict(meta_graph.signature_def)
        self._loaded = tf.saved_model.load(version_dir, tags=list(tags))
        self._functions = dict(self._loaded.signatures)
        signatures = {}
        for name in self._functions:
            sig_def = self.signature_defs[name]
            signatures[name] = Signature(
                name=name,
                method_name=sig_def.method_name,
                input_dtypes={k: v.dtype for k, v in sig_def.inputs.items()},
                output_dtypes={k: v.dtype for k, v in sig_def.outputs.items()},
                has_defaults=bool(getattr(sig_def, "defaults", None)),
            )
        self.signatures = signatures

    def run(self, signature_name, inputs, output_keys=None):
        function = self._functions[signature_name]
        try:
            outputs = function(**{key: tf.constant(value) for key, value in inputs.items()})
            keys = output_keys if output_keys is not None else outputs.keys()
            return {key: outputs[key].numpy() for key in keys}
        except Exception as exc:  # noqa: BLE001 - every runtime failure becomes a serving status
            raise serving_error_from_tf(exc) from exc


def _tensor_info(name: str, dtype, shape_signature) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=name, dtype=tf.dtypes.as_dtype(dtype).as_datatype_enum)
    for size in shape_signature:
        info.tensor_shape.dim.add(size=int(size))
    return info


class TFLiteServable(Servable):
    runtime = "TFLite"

    def __init__(self, version_dir: str, num_threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # pragma: no cover - the pinned stack ships ai-edge-litert
            Interpreter = tf.lite.Interpreter  # noqa: N806
        self.path = version_dir
        self._interpreter = Interpreter(
            model_path=os.path.join(version_dir, TFLITE_FILE), num_threads=num_threads
        )
        # A TFLite interpreter is not thread-safe; one call at a time per version.
        self._lock = threading.Lock()
        self._runners = {}
        self.signature_defs, signatures = {}, {}
        for name in self._interpreter.get_signature_list():
            runner = self._interpreter.get_signature_runner(name)
            inputs, outputs = runner.get_input_details(), runner.get_output_details()
            sig_def = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for key, detail in inputs.items():
                sig_def.inputs[key].CopyFrom(_tensor_info(key, detail["dtype"], detail["shape_signature"]))
            for key, detail in outputs.items():
                sig_def.outputs[key].CopyFrom(_tensor_info(key, detail["dtype"], detail["shape_signature"]))
            self._runners[name] = runner
            self.signature_defs[name] = sig_def
            signatures[name] = Signature(
                name=name,
                method_name=PREDICT_METHOD,
                input_dtypes={k: v.dtype for k, v in sig_def.inputs.items()},
                output_dtypes={k: v.dtype for k, v in sig_def.outputs.items()},
            )
        if not signatures:
            raise ServingError("INVALID_ARGUMENT", f"TFLite model at {version_dir} has no signatures")
        self.signatures = signatures

    def run(self, signature_name, inputs, output_keys=None):
        try:
            with self._lock:
                outputs = self._runners[signature_name](**inputs)
            keys = output_keys if output_keys is not None else outputs.keys()
            return {key: np.array(outputs[key]) for key in keys}
        except Exception as exc:  # noqa: BLE001
            raise serving_error_from_tf(exc) from exc


def has_model_file(version_dir: str, prefer_tflite: bool) -> bool:
    names = SAVED_MODEL_FILES + ((TFLITE_FILE,) if prefer_tflite else ())
    return any(os.path.isfile(os.path.join(version_dir, name)) for name in names)


def load_servable(
    version_dir: str, prefer_tflite: bool = False, tags: Sequence[str] = (SERVE_TAG,)
) -> Servable:
    if prefer_tflite and os.path.isfile(os.path.join(version_dir, TFLITE_FILE)):
        return TFLiteServable(
            version_dir, num_threads=tf.config.threading.get_intra_op_parallelism_threads() or None
        )
    if not any(os.path.isfile(os.path.join(version_dir, name)) for name in SAVED_MODEL_FILES):
        raise ServingError(
            "NOT_FOUND",
            f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {version_dir}. "
            "Check that the directory exists and that you have the right permissions for accessing it.",
        )
    return SavedModelServable(version_dir, tags)
