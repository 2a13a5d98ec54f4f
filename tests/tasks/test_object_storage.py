"""Object storage end to end against moto's S3 server on loopback: publish is all-or-nothing (manifest last);
the steps write their artifacts to `s3://` and read each other's back; MLflow's artifact store is on S3 (a
tracking server with `--artifacts-destination s3://...`); push ships to an `s3://` model base path with
`models.config` on S3 too, which kiln-model-server loads from; verify, promote and a serving sync work from there."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from common import storage
from tasks.artifacts.base import MANIFEST, ArtifactError
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import SAVED_MODEL_DIR, Model
from tasks.artifacts.transform import PREPROCESSING_FILE, TransformGraph, TransformProperties
from tasks.snapshot import Deployment, resolve_run
from tasks.step_runner import run_steps
from tests.servers import free_port, wait_for
from tests.tasks.conftest import UNTIL_TRAIN, digits_pipeline

pytestmark = pytest.mark.slow
DEPLOY = ["optimize", "evaluate", "register", "infra_validate", "push", "verify", "promote"]

PROPS = TransformProperties(num_examples=1, served_features=["x"], feature_kinds={"x": "numeric"})


class Crash(Exception):
    """Stands for the process dying at that point: nothing after it runs."""


def _publish(uri: str, text: str) -> None:
    with TransformGraph.publish(uri) as out:
        (out.dir / PREPROCESSING_FILE).write_text(text)
        (out.dir / "extra").mkdir()
        for index in range(3):
            (out.dir / "extra" / f"part-{index}").write_text(f"{text} {index}")
        out.properties = PROPS


def test_a_publish_to_s3_is_seen_whole_or_not_at_all(s3, monkeypatch) -> None:
    uri = s3.url("atomic", "transform")
    with pytest.raises(RuntimeError), TransformGraph.publish(uri) as out:
        (out.dir / PREPROCESSING_FILE).write_text("never")
        raise RuntimeError("the step failed")
    assert s3.keys("atomic/") == [], "a failed step uploads nothing"

    _publish(uri, "first")
    assert TransformGraph.read(uri).properties == PROPS
    assert f"atomic/transform/{MANIFEST}" in s3.keys("atomic/")

    # A retry dies after two of its files: the old manifest went first, the new one never came.
    fs = storage.url_to_fs(uri)[0]  # fsspec keeps one instance per settings: the one publish uses
    real_put = fs.put_file
    calls = []

    def dying_put(local, remote, *args, **kwargs):
        calls.append(remote)
        if len(calls) > 2:
            raise Crash(remote)
        return real_put(local, remote, *args, **kwargs)

    monkeypatch.setattr(fs, "put_file", dying_put)
    with pytest.raises(Crash):
        _publish(uri, "second")
    monkeypatch.undo()
    left = s3.keys("atomic/")
    assert left and f"atomic/transform/{MANIFEST}" not in left, "files without a manifest"
    with pytest.raises(ArtifactError, match="no complete artifact .*manifest kiln-artifact.json missing"):
        TransformGraph.read(uri)

    _publish(uri, "third")  # the next try publishes it whole, the leftovers replaced
    assert TransformGraph.read(uri).properties == PROPS
    assert storage.read_text(f"{uri}/{PREPROCESSING_FILE}") == "third"
    assert all(storage.read_text(f"s3://{s3.bucket}/{key}").startswith("third")
               for key in s3.keys("atomic/transform/extra/"))


@pytest.fixture(scope="module")
def mlflow_on_s3(module_s3, tmp_path_factory: pytest.TempPathFactory):
    """An MLflow tracking server whose artifact store is `s3://<the module's bucket>/mlflow` (as a fleet's would
    be)."""
    folder = tmp_path_factory.mktemp("mlflow-s3")
    port = free_port()
    with (folder / "mlflow.log").open("wb") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
             f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", module_s3.url("mlflow"),
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, (folder / "mlflow.log").read_text()[-3000:]
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, timeout=120, interval=0.5, message="mlflow server")
        yield url
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def trained_on_s3(module_s3, mlflow_on_s3: str, tiny_digits_csv: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("s3-digits")
    config = digits_pipeline(root, tiny_digits_csv, train={"epochs": 2})
    deployment = Deployment(artifact_root=module_s3.url("artifacts"), tracking_uri=mlflow_on_s3)
    run = resolve_run(str(config), {}, deployment, "manual__s3-digits")
    return {"config": config, "run": run, **run_steps(run, UNTIL_TRAIN)}


def test_ingest_validate_transform_train_write_to_s3_and_read_back(trained_on_s3, module_s3, tmp_path) -> None:
    from tasks.models.export import load_serving_function

    assert all(trained_on_s3[key].startswith(module_s3.url("artifacts", "digits", "manual__s3-digits"))
               for key in ("run", "examples", "statistics", "schema", "transform", "model"))
    keys = module_s3.keys("artifacts/digits/manual__s3-digits/")
    for step in ("resolve/run", "ingest/examples", "validate/schema", "transform/transform", "train/model"):
        assert f"artifacts/digits/manual__s3-digits/{step}/{MANIFEST}" in keys
    assert any(k.endswith("train/model/saved_model/saved_model.pb") for k in keys)

    examples = Examples.read(trained_on_s3["examples"])
    assert examples.split_files("train")[0].startswith("s3://")
    model = Model.read(trained_on_s3["model"])
    assert model.properties.final_metrics["accuracy"] > 0.3 and model.properties.epochs == 2
    assert TransformGraph.read(trained_on_s3["transform"]).preprocessing() == model.preprocessing
    local = model.local(SAVED_MODEL_DIR)
    assert (local / "saved_model.pb").is_file() and not str(local).startswith("s3:")
    assert model.local(SAVED_MODEL_DIR) == local, "cached: the same listing is not downloaded twice"
    import numpy as np

    answer = load_serving_function(model.saved_model)(pixels=np.zeros([1, 64], np.float32))
    assert answer["probabilities"].shape == (1, 10)


def test_push_to_an_s3_model_base_path_is_served_verified_and_synced_from_mlflow_on_s3(
        trained_on_s3, s3, module_s3, s3_model_server, mlflow_on_s3, tmp_path, tiny_digits_csv) -> None:
    from mlflow import MlflowClient

    from serving.client import RestClient
    from serving.deployer import ServingDeployer, read_config
    from tasks.artifacts.promotion import Promotion
    from tasks.artifacts.pushed import PushedModel
    from tasks.artifacts.verification import ServingVerification
    from tasks.context import ServingEndpoints
    from tasks.serving_sync import sync
    from tests.data import first_row

    target = s3_model_server
    config = tmp_path / "pipeline.yaml"
    name = f"m-{uuid.uuid4().hex[:8]}"
    config.write_text(trained_on_s3["config"].read_text() + f"registry: {{model_name: {name}}}\n")
    serving = ServingEndpoints(rest_url=target.rest_url, grpc_address=target.grpc_address,
                               model_base_path=target.model_base_path, config_file=target.config_file)
    run = resolve_run(str(config), {"thresholds": {}, "change_thresholds": {}, "variants": ["dynamic_range"]},
                      Deployment(artifact_root=module_s3.url("artifacts"), tracking_uri=mlflow_on_s3,
                                 serving=serving),
                      "manual__s3-deploy")
    out = run_steps(run, DEPLOY, available=trained_on_s3)

    pushed = PushedModel.read(out["pushed"]).properties
    assert pushed.version_dir == f"{target.model_base_path}/digits/1"
    prefix = target.model_base_path.removeprefix(f"s3://{s3.bucket}/")
    shipped = s3.keys(f"{prefix}/digits/1/")
    # The selected dynamic_range variant ships as TFLite: its file and the warmup requests, never both model files.
    assert set(shipped) == {f"{prefix}/digits/1/{f}" for f in ("model.tflite", "assets.extra/tf_serving_warmup_requests")}
    entry = read_config(target.config_file).model_config_list.config[0]
    assert entry.base_path == f"{target.model_base_path}/digits" and dict(entry.version_labels) == {"stable": 1}
    verified = ServingVerification.read(out["verification"]).properties
    assert verified.labels == {"canary": 1} and verified.max_relative_diff <= 1e-4
    assert Promotion.read(out["promotion"]).properties.labels == {"stable": 1}
    row = first_row(tiny_digits_csv)
    with RestClient(target.rest_url) as client:
        [answer] = client.predict("digits", [{"pixels": [float(row[f"pixel_{i}"]) for i in range(64)]}],
                                  label="stable").outputs
    assert answer["class"] == int(row["label"])
    # MLflow's artifacts went through the tracking server to S3: the version folder register logged, too.
    assert any(k.endswith("/artifacts/tf_serving/model.tflite") for k in module_s3.keys("mlflow/"))

    # The version folder is lost from the base path: a sync brings it back from MLflow's S3 store. (The server
    # keeps the version meanwhile: on S3 the model's base path went with its only version, and while the
    # folder is uploaded again it is there, incomplete; tests/serving/test_deployer.py covers a version the
    # server did unload.)
    deployer = ServingDeployer(target)
    storage.remove(f"{target.model_base_path}/digits/1", first=["model.tflite"])
    assert not deployer.is_staged("digits", 1)
    result = sync(MlflowClient(mlflow_on_s3), name, "digits", deployer)
    assert result.materialized == [1] and deployer.is_staged("digits", 1)
    assert result.after.labels == {"stable": 1} and deployer.served("digits").versions == (1,)
    assert set(s3.keys(f"{prefix}/digits/1/")) == set(shipped), "the same files as register logged"
