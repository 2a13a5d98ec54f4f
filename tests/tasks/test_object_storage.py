"""Artifacts on `s3://` against moto's S3 server on loopback: publish is all-or-nothing (manifest last), and the
steps up to train write their artifacts there and read each other's back."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import storage
from tasks.artifacts.base import MANIFEST, ArtifactError
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import SAVED_MODEL_DIR, Model
from tasks.artifacts.transform import PREPROCESSING_FILE, TransformGraph, TransformProperties
from tasks.snapshot import Deployment, resolve_run
from tasks.step_runner import run_steps
from tests.tasks.conftest import UNTIL_TRAIN, digits_pipeline

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
def trained_on_s3(s3, tiny_digits_csv: Path, mlflow_store: str, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("s3-digits")
    config = digits_pipeline(root, tiny_digits_csv, train={"epochs": 2})
    deployment = Deployment(artifact_root=s3.url("artifacts"), tracking_uri=mlflow_store)
    run = resolve_run(str(config), {}, deployment, "manual__s3-digits")
    return {"config": config, "run": run, **run_steps(run, UNTIL_TRAIN)}


def test_ingest_validate_transform_train_write_to_s3_and_read_back(trained_on_s3, s3, tmp_path) -> None:
    from tasks.models.export import load_serving_function

    assert all(trained_on_s3[key].startswith(s3.url("artifacts", "digits", "manual__s3-digits"))
               for key in ("run", "examples", "statistics", "schema", "transform", "model"))
    keys = s3.keys("artifacts/digits/manual__s3-digits/")
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
