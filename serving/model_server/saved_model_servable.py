"""A SavedModel version served the way TF Serving serves it: the MetaGraph loaded into a TF1 Session, and per
signature one callable prepared at load (`Session.make_callable`, feeds and fetches resolved once).

Calling a TF2 signature function costs Python work per request (argument binding, eager tensor conversion,
signature lookups) before the graph runs; a prepared callable hands the numpy arrays to the C++ runtime
directly. TF Serving's own C++ server also runs a Session, which is why its runtime label is "TF1".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
from tensorflow.python.util import deprecation

from serving.codec import ServingError
from serving.model_server.servable import (
    SERVE_TAG,
    Servable,
    Signature,
    read_meta_graph,
    serving_error_from_tf,
)

# tf.saved_model.save adds this entry for its initializer; it is not a servable signature.
INIT_OP_SIGNATURE = "__saved_model_init_op"


def _shape_text(dims: Sequence[int] | None) -> str:
    if dims is None:
        return "<unknown>"
    return "(" + ", ".join("None" if d < 0 else str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"


class _Feed:
    """One signature input: its tensor name, dtype and the shape the graph was built for."""

    __slots__ = ("name", "dtype", "dims")

    def __init__(self, info: meta_graph_pb2.TensorInfo):
        self.name = info.name
        self.dtype = tf.dtypes.as_dtype(info.dtype).as_numpy_dtype
        shape = info.tensor_shape
        self.dims = None if shape.unknown_rank else tuple(d.size for d in shape.dim)

    def check(self, value: np.ndarray) -> None:
        """Session.run's feed checks, which the C++ callable skips: a wrong rank reaching a oneDNN kernel
        aborts the whole process, and a wrong dtype would be converted silently."""
        if value.dtype != self.dtype and not (value.dtype == object and self.dtype == object):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Expects arg for {self.name} to be {tf.dtypes.as_dtype(self.dtype).name} but "
                f"{_dtype_name(value)} is provided",
            )
        if self.dims is None:
            return
        shape = value.shape
        if len(shape) != len(self.dims) or any(
            d >= 0 and d != s for d, s in zip(self.dims, shape, strict=True)
        ):
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Cannot feed value of shape {_shape_text(shape)} for Tensor {self.name}, "
                f"which has shape {_shape_text(self.dims)}",
            )


def _dtype_name(value: np.ndarray) -> str:
    try:
        return tf.dtypes.as_dtype(value.dtype).name
    except TypeError:
        return str(value.dtype)


class _SignatureCallable:
    """One signature's feeds and fetches, prepared once at load as a C++ callable (`MakeCallable`): a request
    hands it numpy arrays, with no Python-side feed or fetch processing."""

    def __init__(self, session: tf.compat.v1.Session, sig_def: meta_graph_pb2.SignatureDef):
        self._session = session
        self._feeds = {key: _Feed(info) for key, info in sig_def.inputs.items()}
        self._input_keys = tuple(self._feeds)
        self._output_keys = tuple(sig_def.outputs)
        self._fetch_names = [sig_def.outputs[key].name for key in self._output_keys]
        options = config_pb2.CallableOptions(
            feed=[self._feeds[key].name for key in self._input_keys], fetch=self._fetch_names
        )
        # The graph's ops run on the calling (request) thread instead of being handed to the inter-op pool:
        # TensorFlow's documented choice for small graphs, where that context switch costs as much as the run.
        # Kernels still split work over the intra-op pool.
        options.run_options.inter_op_thread_pool = -1
        self._all_inputs = session._make_callable_from_options(options)  # noqa: SLF001 - tf_keras uses it too

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for key, value in inputs.items():
            feed = self._feeds.get(key)
            if feed is None:
                raise ServingError("INVALID_ARGUMENT", f"input tensor alias not found in signature: {key}")
            feed.check(value)
        if len(inputs) == len(self._input_keys):
            values = self._all_inputs(*[inputs[key] for key in self._input_keys])
        else:
            # Inputs with defaults (placeholder_with_default) left out: rare, so no prepared callable.
            feed_dict = {self._feeds[key].name: value for key, value in inputs.items()}
            values = self._session.run(self._fetch_names, feed_dict=feed_dict)
        return dict(zip(self._output_keys, values, strict=True))


class SavedModelServable(Servable):
    runtime = "TF1"

    def __init__(self, version_dir: str, tags: Sequence[str] = (SERVE_TAG,)):
        self.path = version_dir
        meta_graph = read_meta_graph(version_dir, set(tags))
        self.signature_defs = dict(meta_graph.signature_def)
        threading = tf.config.threading
        config = config_pb2.ConfigProto(
            intra_op_parallelism_threads=threading.get_intra_op_parallelism_threads(),
            inter_op_parallelism_threads=threading.get_inter_op_parallelism_threads(),
        )
        graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=graph, config=config)
        # The TF1 loader is deprecated in favour of tf.saved_model.load, which gives no Session; quiet its warning.
        with graph.as_default(), deprecation.silence():
            tf.compat.v1.saved_model.loader.load(self._session, list(tags), version_dir)
        self._callables: dict[str, _SignatureCallable] = {}
        signatures = {}
        for name, sig_def in self.signature_defs.items():
            if name == INIT_OP_SIGNATURE:
                continue
            self._callables[name] = _SignatureCallable(self._session, sig_def)
            signatures[name] = Signature(
                name=name,
                method_name=sig_def.method_name,
                input_dtypes={k: v.dtype for k, v in sig_def.inputs.items()},
                output_dtypes={k: v.dtype for k, v in sig_def.outputs.items()},
                has_defaults=bool(getattr(sig_def, "defaults", None)),
            )
        self.signatures = signatures
        graph.finalize()  # nothing may add ops on the request path

    def run(self, signature_name, inputs, output_keys=None):
        try:
            outputs = self._callables[signature_name](inputs)
        except Exception as exc:  # noqa: BLE001 - every runtime failure becomes a serving status
            raise serving_error_from_tf(exc) from exc
        if output_keys is None:
            return outputs
        return {key: outputs[key] for key in output_keys}
