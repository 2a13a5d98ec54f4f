"""Predict, Classify, Regress and MultiInference on a resolved servable, with TF Serving's checks and messages.

Shared by the gRPC servicer, the REST handlers (after JSON decoding) and warmup replay. `Runner` is how a
signature is executed: directly, or through the batching scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from tensorflow_serving.apis import classification_pb2, inference_pb2, input_pb2, regression_pb2

from serving.codec import ServingError
from serving.model_server.servable import Servable, Signature

DEFAULT_SIGNATURE = "serving_default"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# (servable, signature name, inputs) -> all outputs of the signature
Runner = Callable[[Servable, str, Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def direct_runner(
    servable: Servable, signature: str, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    return servable.run(signature, inputs)


def predict_signature(servable: Servable, signature_name: str) -> Signature:
    """gRPC Predict's lookup (predict_util.cc): a missing signature is FAILED_PRECONDITION."""
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        raise ServingError("FAILED_PRECONDITION", f'Serving signature key "{name}" not found.')
    return signature


def check_predict_inputs(signature: Signature, sent: Sequence[str]) -> None:
    expected = set(signature.input_dtypes)
    sent_set = set(sent)
    if sent_set == expected:
        return
    extra, missing = sorted(sent_set - expected), sorted(expected - sent_set)
    if missing and not extra and signature.has_defaults:
        return

    def braces(items):
        return "{" + ",".join(items) + "}"

    raise ServingError(
        "INVALID_ARGUMENT",
        f"input size does not match signature: {len(sent_set)}!={len(expected)} len({braces(sorted(sent_set))}) "
        f"!= len({braces(sorted(expected))}). Sent extra: {braces(extra)}. Missing but required: {braces(missing)}.",
    )


def select_outputs(
    signature: Signature, outputs: Mapping[str, np.ndarray], output_filter: Sequence[str]
) -> dict[str, np.ndarray]:
    if not output_filter:
        return dict(outputs)
    selected = {}
    for alias in output_filter:
        if alias not in signature.output_dtypes:
            raise ServingError("INVALID_ARGUMENT", f"output tensor alias not found in signature: {alias}")
        if alias in selected:
            raise ServingError("INVALID_ARGUMENT", f"duplicate output tensor alias: {alias}")
        selected[alias] = outputs[alias]
    return selected


def serialized_examples(model_input: input_pb2.Input) -> np.ndarray:
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        records = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        context = with_context.context.SerializeToString()
        # Protobuf merge-by-concatenation: example features override context features of the same name.
        records = [context + e.SerializeToString() for e in with_context.examples]
    else:
        records = []
    if not records:
        raise ServingError("INVALID_ARGUMENT", "Input is empty.")
    return np.array(records, dtype=object)


def _lookup(servable: Servable, signature_name: str) -> Signature:
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        raise ServingError("INVALID_ARGUMENT", f"No signature was found with the name: {name}")
    return signature


def _single_input(signature: Signature) -> str:
    if len(signature.input_dtypes) != 1:
        raise ServingError("INVALID_ARGUMENT", "Expected one input Tensor.")
    return next(iter(signature.input_dtypes))


def classify(
    servable: Servable, signature_name: str, model_input: input_pb2.Input, run: Runner = direct_runner
) -> classification_pb2.ClassificationResult:
    signature = _lookup(servable, signature_name)
    input_key = _single_input(signature)
    if len(signature.output_dtypes) not in (1, 2):
        raise ServingError(
            "INVALID_ARGUMENT", f"Expected one or two output Tensors, found {len(signature.output_dtypes)}"
        )
    if "classes" not in signature.output_dtypes and "scores" not in signature.output_dtypes:
        raise ServingError(
            "INVALID_ARGUMENT",
            'Expected classification signature outputs to contain at least one of "classes" and "scores".',
        )
    examples = serialized_examples(model_input)
    outputs = run(servable, signature.name, {input_key: examples})
    batch = len(examples)
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for name, tensor in (("classes", classes), ("scores", scores)):
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise ServingError(
                "INVALID_ARGUMENT",
                f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}",
            )
        if tensor.shape[0] != batch:
            raise ServingError(
                "INVALID_ARGUMENT", f"Expected {name} output batch size of {batch}, got {tensor.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise ServingError(
            "INVALID_ARGUMENT",
            f"Tensors class and score should match in shape, but had shape {list(classes.shape)} and {list(scores.shape)}",
        )
    result = classification_pb2.ClassificationResult()
    width = (classes if classes is not None else scores).shape[1]
    for row in range(batch):
        item = result.classifications.add()
        for column in range(width):
            entry = item.classes.add()
            if classes is not None:
                label = classes[row, column]
                entry.label = label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)
            if scores is not None:
                entry.score = float(scores[row, column])
    return result


def regress(
    servable: Servable, signature_name: str, model_input: input_pb2.Input, run: Runner = direct_runner
) -> regression_pb2.RegressionResult:
    signature = _lookup(servable, signature_name)
    input_key = _single_input(signature)
    if len(signature.output_dtypes) != 1:
        raise ServingError("INVALID_ARGUMENT", "Expected one output Tensor.")
    if "outputs" not in signature.output_dtypes:
        raise ServingError("INVALID_ARGUMENT", "No regression output tensor 'outputs' found in signature.")
    examples = serialized_examples(model_input)
    values = run(servable, signature.name, {input_key: examples})["outputs"]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise ServingError(
            "INVALID_ARGUMENT",
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {list(values.shape)}",
        )
    if values.shape[0] != len(examples):
        raise ServingError(
            "INVALID_ARGUMENT",
            f"Input batch size did not match output batch size: {len(examples)} vs. {values.shape[0]}",
        )
    result = regression_pb2.RegressionResult()
    for value in values.reshape(-1):
        result.regressions.add(value=float(value))
    return result


def multi_inference(
    request: inference_pb2.MultiInferenceRequest,
    resolve: Callable[[object], tuple[int, Servable]],
    run: Runner = direct_runner,
) -> inference_pb2.MultiInferenceResponse:
    if not request.tasks:
        raise ServingError("INVALID_ARGUMENT", "Expected at least one task")
    model_name = request.tasks[0].model_spec.name
    seen: set[str] = set()
    for task in request.tasks:
        if task.model_spec.name != model_name:
            raise ServingError(
                "INVALID_ARGUMENT",
                "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
            )
        signature = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature in seen:
            raise ServingError("INVALID_ARGUMENT", f"Duplicate evaluation of signature: {signature}")
        seen.add(signature)
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise ServingError("UNIMPLEMENTED", f"Unsupported signature method_name: {task.method_name}")
    version, servable = resolve(request.tasks[0].model_spec)
    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        result = response.results.add()
        result.model_spec.name = model_name
        result.model_spec.version.value = version
        result.model_spec.signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(
                classify(servable, task.model_spec.signature_name, request.input, run)
            )
        else:
            result.regression_result.CopyFrom(
                regress(servable, task.model_spec.signature_name, request.input, run)
            )
    return response
