"""kiln-model-server's gRPC services (PredictionService, ModelService), black-box over a real port."""

from __future__ import annotations

import time

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sync server", "batching (grpc.aio) server"])
def channel(request, standard_server, server_factory):
    """Every test runs against both gRPC servers: without and with --enable_batching."""
    target = standard_server.server.grpc_target
    if request.param.startswith("batching"):
        config = standard_server.base_paths["default"].parent / "models.config"
        flags = [
            "--allow_version_labels_for_unavailable_models",
            "--max_num_load_retries=0",
            "--enable_batching",
        ]
        target = server_factory(f"--model_config_file={config}", *flags).grpc_target
    with grpc.insecure_channel(target) as channel:
        yield channel


@pytest.fixture(scope="module")
def prediction(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(name: str, values, **spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    if "signature" in spec:
        request.model_spec.signature_name = spec["signature"]
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(values, dtype=tf.float32))
    return request


def add_example(model_input, x: float) -> None:
    model_input.example_list.examples.add().features.feature["x"].float_list.value.append(x)


def test_readiness_probe_of_the_upstream_harness(prediction):
    with pytest.raises(grpc.RpcError) as caught:
        prediction.Predict(predict_request("intentionally_missing_model", [1.0]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "Servable not found for request: Latest(intentionally_missing_model)"


def test_predict_with_output_filter_echoes_model_spec(prediction):
    request = predict_request("default", [2.0])
    request.output_filter.append("y")
    response = prediction.Predict(request, timeout=10)
    assert list(response.outputs["y"].float_val) == [3.0]
    assert response.outputs["y"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in response.outputs["y"].tensor_shape.dim] == [1]
    assert response.model_spec.name == "default"
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_predict_versions_labels_and_errors(prediction):
    assert prediction.Predict(predict_request("half_plus_two", [2.0]), timeout=10).outputs["y"].float_val == [
        4.0
    ]
    by_label = prediction.Predict(predict_request("half_plus_two", [2.0], label="Version_Label"), timeout=10)
    assert by_label.outputs["y"].float_val == [3.0] and by_label.model_spec.version.value == 123
    cases = [
        (predict_request("half_plus_two", [2.0], version=7), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Specific(half_plus_two, 7)"),
        (predict_request("half_plus_two", [2.0], label="nope"), grpc.StatusCode.INVALID_ARGUMENT,
         "Unrecognized servable version label: nope"),
        (predict_request("half_plus_two", [2.0], signature="nope"), grpc.StatusCode.FAILED_PRECONDITION,
         'Serving signature key "nope" not found.'),
    ]  # fmt: skip
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as caught:
            prediction.Predict(request, timeout=10)
        assert (caught.value.code(), caught.value.details()) == (code, message)
    request = predict_request("default", [2.0])
    request.inputs["z"].CopyFrom(tf.make_tensor_proto([1.0]))
    with pytest.raises(grpc.RpcError) as caught:
        prediction.Predict(request, timeout=10)
    assert caught.value.details() == (
        "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. Missing but required: {}."
    )
    request = predict_request("default", [2.0])
    request.output_filter.append("nope")
    with pytest.raises(grpc.RpcError) as caught:
        prediction.Predict(request, timeout=10)
    assert caught.value.details() == "output tensor alias not found in signature: nope"


def test_classify_regress_and_multi_inference(prediction):
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = "default", "classify_x_to_y"
    add_example(classify.input, 2.0)
    response = prediction.Classify(classify, timeout=10)
    assert response.result.classifications[0].classes[0].score == 3.0
    assert (response.model_spec.name, response.model_spec.version.value) == ("default", 123)
    assert response.model_spec.signature_name == "classify_x_to_y"

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "default", "regress_x_to_y"
    add_example(regress.input, 2.0)
    assert prediction.Regress(regress, timeout=10).result.regressions[0].value == 3.0

    multi = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = multi.tasks.add(method_name=f"tensorflow/serving/{method}")
        task.model_spec.name, task.model_spec.signature_name = "default", signature
    add_example(multi.input, 2.0)
    results = prediction.MultiInference(multi, timeout=10).results
    assert results[0].regression_result.regressions[0].value == 3.0
    assert results[1].classification_result.classifications[0].classes[0].score == 3.0
    multi.tasks[1].model_spec.name = "half_plus_two"
    with pytest.raises(grpc.RpcError) as caught:
        prediction.MultiInference(multi, timeout=10)
    assert "must access the same model name" in caught.value.details()


def test_get_model_metadata(prediction):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "default"
    with pytest.raises(grpc.RpcError) as caught:
        prediction.GetModelMetadata(request, timeout=10)
    assert caught.value.details() == "GetModelMetadataRequest must specify at least one metadata_field"
    request.metadata_field.append("signature_def")
    response = prediction.GetModelMetadata(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("default", 123)
    assert list(response.metadata) == ["signature_def"]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert signatures.signature_def["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum


def test_get_model_status(models):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    response = models.GetModelStatus(request, timeout=10)
    assert [(s.version, s.state, s.status.error_code) for s in response.model_version_status] == [
        (123, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)
    ]
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as caught:
        models.GetModelStatus(request, timeout=10)
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "Could not find any versions of model nope",
    )


def test_batched_predict_of_a_cancelled_call_leaves_its_batch_intact(server_factory, standard_server):
    """A client giving up on a batched Predict must not fail the other requests of its batch."""
    config = standard_server.base_paths["default"].parent / "models.config"
    batching = standard_server.base_paths["default"].parent / "batching.config"
    batching.write_text("max_batch_size { value: 8 } batch_timeout_micros { value: 200000 }\n")
    server = server_factory(
        f"--model_config_file={config}",
        "--allow_version_labels_for_unavailable_models",
        "--enable_batching",
        f"--batching_parameters_file={batching}",
    )
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        stub.Predict(predict_request("default", [0.0]), timeout=30)  # connected and warm
        hasty = stub.Predict.future(predict_request("default", [4.0]), timeout=30)  # first in the batch
        time.sleep(0.02)
        patient = stub.Predict.future(predict_request("default", [2.0]), timeout=30)
        time.sleep(0.05)  # both are queued in the batch (it closes after 200 ms)
        hasty.cancel()
        assert list(patient.result().outputs["y"].float_val) == [3.0]
