"""A `model.tflite` version (--prefer_tflite_model) run by LiteRT, one interpreter per request thread.

A LiteRT interpreter is not thread-safe, and one shared interpreter behind a lock serialises every request on
it. Each thread therefore builds its own single-threaded interpreter from the model bytes the first time it
runs this version: requests run in parallel (LiteRT's invoke releases the GIL), and a small model costs a few
MiB per thread. Interpreters live as long as the version and its threads.
"""

from __future__ import annotations

import threading

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from serving.codec import ServingError
from serving.model_server.servable import (
    PREDICT_METHOD,
    TFLITE_FILE,
    Servable,
    Signature,
    serving_error_from_tf,
)

try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:  # pragma: no cover - the pinned stack ships ai-edge-litert
    Interpreter = tf.lite.Interpreter


def _tensor_info(name: str, dtype, shape_signature) -> meta_graph_pb2.TensorInfo:
    info = meta_graph_pb2.TensorInfo(name=name, dtype=tf.dtypes.as_dtype(dtype).as_datatype_enum)
    for size in shape_signature:
        info.tensor_shape.dim.add(size=int(size))
    return info


class TFLiteServable(Servable):
    runtime = "TFLite"

    def __init__(self, version_dir: str, threads_per_interpreter: int = 1):
        self.path = version_dir
        with open(f"{version_dir}/{TFLITE_FILE}", "rb") as handle:
            self._model = handle.read()
        self._threads_per_interpreter = threads_per_interpreter
        self._per_thread = threading.local()
        self._interpreters = 0
        self._count_lock = threading.Lock()
        runners = self._runners()  # the loading thread's interpreter; also proves the file loads
        self.signature_defs, signatures = {}, {}
        for name, runner in runners.items():
            inputs, outputs = runner.get_input_details(), runner.get_output_details()
            sig_def = meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
            for key, detail in inputs.items():
                sig_def.inputs[key].CopyFrom(_tensor_info(key, detail["dtype"], detail["shape_signature"]))
            for key, detail in outputs.items():
                sig_def.outputs[key].CopyFrom(_tensor_info(key, detail["dtype"], detail["shape_signature"]))
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

    def _runners(self) -> dict:
        """This thread's signature runners, built on its first request."""
        runners = getattr(self._per_thread, "runners", None)
        if runners is None:
            interpreter = Interpreter(model_content=self._model, num_threads=self._threads_per_interpreter)
            runners = {
                name: interpreter.get_signature_runner(name) for name in interpreter.get_signature_list()
            }
            self._per_thread.runners = runners
            with self._count_lock:
                self._interpreters += 1
        return runners

    @property
    def interpreter_count(self) -> int:
        """How many threads have built their own interpreter so far."""
        return self._interpreters

    def run(self, signature_name, inputs, output_keys=None):
        try:
            outputs = self._runners()[signature_name](**inputs)
        except Exception as exc:  # noqa: BLE001
            raise serving_error_from_tf(exc) from exc
        keys = output_keys if output_keys is not None else outputs.keys()
        return {key: np.asarray(outputs[key]) for key in keys}
