"""Convert a SavedModel's `serving_default` to TFLite, and measure the file with LiteRT's interpreter:
its answers on the eval split, batch-1 latency and the sparsity of its weights.

Only the TFLite builtins. kiln's own preprocessing is covered for every feature kind (string and integer
lookups, buckets, normalization, booleans: see tasks.models.one_hot); a model that is not (a custom layer
whose ops need Select TF ops, which LiteRT's interpreter here does not include) raises `ConversionSkipped`
naming the layer and its ops, never a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.models.export import SIGNATURE

WEIGHTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D")


class ConversionSkipped(Exception):
    """The converter or the interpreter cannot handle this model; the message says why."""


def convert(saved_model: Path, conversion: str, representative: Callable[[], Iterator[dict[str, Any]]] | None = None,
            integer_io: bool = False) -> bytes:
    """`conversion`: float32, dynamic_range, float16, int8 (calibrated on `representative`) or quantized
    (a QAT model: its ranges were learned, no calibration)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[SIGNATURE])
    if conversion != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if conversion == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if conversion == "int8":
        converter.representative_dataset = _calibration_examples(representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if integer_io and conversion in ("int8", "quantized"):
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises a zoo of types; one line is what the record needs
        raise ConversionSkipped(f"TFLite conversion ({conversion}) failed: {why_not_converted(exc)}") from None


def _calibration_examples(representative: Callable[[], Iterator[dict[str, Any]]] | None) -> Any:
    """`representative` with string inputs as fixed-width bytes arrays. The calibrator reads an object
    array of bytes (what tf.data gives) as values in no vocabulary: every example would calibrate as out of
    vocabulary, and the int8 ranges of the layers after a lookup would come out far too narrow."""
    if representative is None:
        return None

    def examples() -> Iterator[dict[str, Any]]:
        for example in representative():
            yield {name: np.asarray(values).astype(np.bytes_) if np.asarray(values).dtype == object else values
                   for name, values in example.items()}

    return examples


def why_not_converted(exc: Exception) -> str:
    """One line: the layers whose ops are outside the TFLite builtins, with the ops; else the converter's
    first error, with its layer when the converter located it."""
    ops = _select_ops(str(exc))
    if not ops:
        return _first_error(exc)[:300]
    layers = _layers_using(exc, ops)
    if not layers:
        why = f"ops outside the TFLite builtins ({', '.join(ops)})"
    elif len(layers) == 1:
        [(layer, used)] = layers.items()
        why = f"layer {layer!r} uses ops outside the TFLite builtins ({', '.join(used)})"
    else:
        named = ", ".join(f"{layer!r} ({', '.join(used)})" for layer, used in layers.items())
        why = f"layers {named} use ops outside the TFLite builtins"
    untraced = [op for op in ops if not any(op in used for used in layers.values())]
    if layers and untraced:
        why += f" (and {', '.join(untraced)}, not traced to a layer)"
    return f"{why}; they need Select TF ops, which LiteRT's interpreter here does not include"


def _select_ops(message: str) -> list[str]:
    """The ops the converter lists as needing Select TF ops (or resource ops), in its order."""
    ops: list[str] = []
    for marker in ("TF Select ops:", "Resource ops:"):
        for part in message.split(marker)[1:]:
            ops += [op.strip() for op in part.splitlines()[0].split(",") if op.strip()]
    return list(dict.fromkeys(ops))


def _layers_using(exc: Exception, ops: list[str]) -> dict[str, list[str]]:
    """{layer: the ops of `ops` it made}, layers in graph order (the order of the converter's message)."""
    found: dict[str, set[str]] = {}
    for error in _errors(exc):
        op, layer = error.operator.name.removeprefix("tf."), _layer(error)
        if op in ops and layer:
            found.setdefault(layer, set()).add(op)
    message = str(exc)
    return {layer: [op for op in ops if op in used]
            for layer, used in sorted(found.items(), key=lambda item: message.find(f"/{item[0]}/"))}


def _errors(exc: Exception) -> list[Any]:
    """The converter's structured errors (`ConverterError.errors`: the op and where it was made)."""
    return list(getattr(exc, "errors", None) or [])


def _layer(error: Any) -> str | None:
    """The model layer that made the op: its location is the name scope `kiln_model/<layer>/.../<op>`."""
    for call in error.location.call:
        scope = call.name.split("@")[0].split("/")
        if len(scope) > 2:
            return scope[1]
    return None


def _first_error(exc: Exception) -> str:
    for error in _errors(exc):
        first = error.error_message.strip().splitlines()[0] if error.error_message.strip() else ""
        if first:
            layer = _layer(error)
            return f"layer {layer!r}: {first}" if layer else first
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class Runner:
    """The `serving_default` signature of a TFLite model in LiteRT, quantizing int8 inputs and
    dequantizing int8 outputs when the file has integer I/O."""

    def __init__(self, model: bytes, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        try:
            self._runner = Interpreter(model_content=model, num_threads=threads).get_signature_runner(SIGNATURE)
        except (RuntimeError, ValueError) as exc:
            raise ConversionSkipped(f"LiteRT cannot load the model: {str(exc).splitlines()[0][:300]}") from None
        self._inputs = self._runner.get_input_details()
        self._outputs = self._runner.get_output_details()

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:
        feed = {}
        for name, values in inputs.items():
            details = self._inputs[name]
            values = np.asarray(values)
            scale, zero = details["quantization"]
            if details["dtype"] in (np.int8, np.uint8) and scale:
                values = np.clip(np.round(values / scale + zero), np.iinfo(details["dtype"]).min,
                                 np.iinfo(details["dtype"]).max)
            feed[name] = values.astype(details["dtype"])
        try:
            outputs = self._runner(**feed)
        except (RuntimeError, ValueError) as exc:
            raise ConversionSkipped(f"LiteRT cannot run the model: {str(exc).splitlines()[0][:300]}") from None
        for name, values in outputs.items():
            scale, zero = self._outputs[name]["quantization"]
            if self._outputs[name]["dtype"] in (np.int8, np.uint8) and scale:
                outputs[name] = (values.astype(np.float32) - zero) * scale
        return outputs


def latency_ms(model: bytes, example: dict[str, Any], runs: int, threads: int = 1) -> tuple[float, float]:
    """(p50, p99) milliseconds of one batch-1 call, after warm-up."""
    runner = Runner(model, threads)
    for _ in range(max(5, runs // 20)):
        runner(example)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runner(example)
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def weight_sparsity(model: bytes) -> tuple[float, dict[str, float]]:
    """(share of zero weights over all FC/conv kernels, per kernel tensor), read from the file's own
    buffers (the TFLite flatbuffer schema), whatever their storage type: float32, float16 or int8."""
    from tensorflow.lite.python import schema_py_generated as schema

    parsed = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    names = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
              schema.TensorType.INT8: np.int8, schema.TensorType.UINT8: np.uint8}
    zeros = total = 0
    per_layer: dict[str, float] = {}
    for graph in parsed.subgraphs or []:
        ops = [(names.get(max(parsed.operatorCodes[op.opcodeIndex].builtinCode,
                              parsed.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)), op)
               for op in graph.operators or []]
        producer = {int(output): (name, op) for name, op in ops for output in op.outputs}
        for name, op in ops:
            if name not in WEIGHTED_OPS:
                continue
            index = int(op.inputs[1])
            while index in producer and producer[index][0] == "DEQUANTIZE":  # float16 / int8 storage
                index = int(producer[index][1].inputs[0])
            tensor = graph.tensors[index]
            data = parsed.buffers[tensor.buffer].data
            if data is None or tensor.type not in dtypes:
                continue  # not a constant (or a type kiln does not read)
            weights = np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype=dtypes[tensor.type])
            quantization = tensor.quantization
            zero_point = int(quantization.zeroPoint[0]) if quantization is not None and \
                quantization.zeroPoint is not None and len(quantization.zeroPoint) == 1 else 0
            count = int(np.sum(weights == zero_point))
            per_layer[tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)] = \
                round(count / weights.size, 4)
            zeros += count
            total += weights.size
    return (zeros / total if total else 0.0), per_layer
