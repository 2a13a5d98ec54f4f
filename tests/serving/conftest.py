"""Fixtures for the serving tests: TF Serving's test models written with tf.saved_model.save, and a helper
that runs kiln-model-server as a subprocess on free loopback ports."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import RunningServer, start_server


def save_half_plus(path: Path, offset: float) -> None:
    """TF Serving's half_plus_two test model (y = 0.5x + offset) with its three signatures."""
    import tensorflow as tf

    class HalfPlus(tf.Module):
        def __init__(self):
            self.a = tf.Variable(0.5)
            self.b = tf.Variable(offset)

        def _y(self, x):
            return self.a * x + self.b

        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
        def predict(self, x):
            return {"y": self._y(x)}

        def _parsed(self, serialized):
            features = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})
            return self._y(features["x"])

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            return {"scores": self._parsed(inputs)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs):
            return {"outputs": self._parsed(inputs)}

    module = HalfPlus()
    signatures = {
        "serving_default": module.predict,
        "classify_x_to_y": module.classify,
        "regress_x_to_y": module.regress,
    }
    tf.saved_model.save(module, str(path), signatures=signatures)


def half_plus_three_tflite() -> bytes:
    """A TFLite file computing y = 0.5x + 3: beside half_plus_two's SavedModel, it shows which one answered."""
    import tensorflow as tf

    class HalfPlusThree(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x):
            return {"y": 0.5 * x + 3.0}

    module = HalfPlusThree()
    return tf.lite.TFLiteConverter.from_concrete_functions([module.serve.get_concrete_function()], module).convert()


def save_two_inputs(path: Path) -> None:
    """A model with two inputs and two outputs, for the multi-tensor JSON shapes."""
    import tensorflow as tf

    class TwoInputs(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 2], tf.float32, name="a"),
                tf.TensorSpec([None], tf.string, name="b"),
            ]
        )
        def serve(self, a, b):
            return {"sum": tf.reduce_sum(a, axis=1), "text_bytes": tf.strings.join([b, b"!"])}

    module = TwoInputs()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def write_warmup(version_dir: Path, good: bool) -> None:
    """A warmup file of two predict records, or bytes that are not a TFRecord."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    target = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not good:
        target.write_bytes(b"this is not a TFRecord file")
        return
    with tf.io.TFRecordWriter(str(target)) as writer:
        for value in (1.0, 2.0):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "warm"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([value], dtype=tf.float32))
            writer.write(
                prediction_log_pb2.PredictionLog(
                    predict_log=prediction_log_pb2.PredictLog(request=request)
                ).SerializeToString()
            )


@dataclass
class TestModels:
    root: Path
    sources: dict[str, Path] = field(default_factory=dict)

    def install(self, source: str, base_path: Path, version: int) -> Path:
        """Copy a saved model into base_path/<version> the way the deployer does: temp folder, then rename."""
        base_path.mkdir(parents=True, exist_ok=True)
        staging = base_path / f".tmp-{version}"
        shutil.copytree(self.sources[source], staging)
        final = base_path / str(version)
        os.rename(staging, final)
        return final


@pytest.fixture(scope="session")
def test_models(tmp_path_factory) -> TestModels:
    """half_plus_two, half_plus_three and two_inputs as SavedModels (built once per session)."""
    root = tmp_path_factory.mktemp("tfs_test_models")
    models = TestModels(root)
    for name, builder in {
        "half_plus_two": lambda p: save_half_plus(p, 2.0),
        "half_plus_three": lambda p: save_half_plus(p, 3.0),
        "two_inputs": save_two_inputs,
    }.items():
        models.sources[name] = root / name
        builder(models.sources[name])
    return models


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory):
    """Start servers with factory(flags...); every server a module started is stopped when the module ends."""
    started: list[RunningServer] = []
    log_dir = tmp_path_factory.mktemp("server_logs")

    def factory(*flags: str, timeout: float = 90) -> RunningServer:
        server = start_server(log_dir, *flags, timeout=timeout)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@dataclass
class StandardServer:
    server: RunningServer
    base_paths: dict[str, Path]
    prometheus_path: str = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="session")
def standard_server(test_models, tmp_path_factory):
    """One server shared by the REST and gRPC protocol tests.

    Models: `half_plus_two` (policy all; version 123 = half_plus_two, version 124 = half_plus_three, label
    `Version_Label` -> 123), `default` (half_plus_two v123 only) and `two_inputs` (v1); Prometheus enabled.
    """
    root = tmp_path_factory.mktemp("standard_server")
    bases = {name: root / name for name in ("half_plus_two", "default", "two_inputs")}
    test_models.install("half_plus_two", bases["half_plus_two"], 123)
    test_models.install("half_plus_three", bases["half_plus_two"], 124)
    test_models.install("half_plus_two", bases["default"], 123)
    test_models.install("two_inputs", bases["two_inputs"], 1)
    config = root / "models.config"
    config.write_text(
        f"""model_config_list {{
  config {{ name: "half_plus_two" base_path: "{bases["half_plus_two"]}" model_platform: "tensorflow"
           model_version_policy {{ all {{}} }}
           version_labels {{ key: "Version_Label" value: 123 }} }}
  config {{ name: "default" base_path: "{bases["default"]}" model_platform: "tensorflow" }}
  config {{ name: "two_inputs" base_path: "{bases["two_inputs"]}" model_platform: "tensorflow" }}
}}
"""
    )
    monitoring = root / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }\n')
    log_dir = tmp_path_factory.mktemp("standard_server_logs")
    server = start_server(
        log_dir,
        f"--model_config_file={config}",
        f"--monitoring_config_file={monitoring}",
        "--allow_version_labels_for_unavailable_models",
        "--max_num_load_retries=0",
    )
    try:
        yield StandardServer(server, bases)
    finally:
        server.stop()
