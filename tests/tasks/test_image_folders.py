"""Image folders (one folder per class, PNG and JPEG): decoded and resized by ingest, counted by validate, served
as a float32 [height, width, channels] input, and every bad image a one-line error or, within data.max_bad_rows,
a counted skip."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2

from serving.client import RestClient
from tasks.artifacts.examples import Examples
from tasks.artifacts.promotion import Promotion
from tasks.artifacts.transform import TransformGraph
from tasks.batch import commit, job, scoring
from tasks.config import BatchConfig, load_config
from tasks.data.images import decode
from tasks.snapshot import pipeline_context
from tasks.step_runner import StepRejected, run_step, run_steps
from tests.images import write_image_folder
from tests.tasks.conftest import UNTIL_TRAIN, resolve, write_pipeline
from tests.tasks.test_deploy import DEPLOY, endpoints

SHAPE = {"height": 12, "width": 12, "channels": 1}


def image_pipeline(folder: Path, source: Path, **data: Any) -> Path:
    return write_pipeline(folder, "stripes", source, {"type": "classification"}, data={"image": SHAPE, **data},
                          train={"model": "cnn", "epochs": 4}, registry={"model_name": f"m-{uuid.uuid4().hex[:8]}"})


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images") / "stripes")


@pytest.fixture(scope="module")
def trained_images(image_folder: Path, mlflow_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("trained-images")
    config = image_pipeline(root, image_folder)
    return {"config": config, "root": root, **run_steps(resolve(config, root, mlflow_store, run_id="images"),
                                                         UNTIL_TRAIN)}


def test_images_become_fixed_size_pixels_with_their_folder_as_label(trained_images, image_folder) -> None:
    examples = Examples.read(trained_images["examples"])
    props = examples.properties
    assert [(c.name, c.type, c.shape) for c in props.columns] == [("image", "image", [12, 12, 1]),
                                                                   ("label", "string", None)]
    assert sum(props.row_counts.values()) == 120 and props.source_format == "images"
    rows = [row for batch in examples.batches("train") for row in batch.to_pylist()]
    assert {row["label"] for row in rows} == {"horizontal", "vertical"}
    assert all(len(row["image"]) == 144 for row in rows)

    schema = text_format.Parse((Path(trained_images["schema"]) / "schema.pbtxt").read_text(), schema_pb2.Schema())
    image = next(f for f in schema.feature if f.name == "image")
    assert image.type == schema_pb2.BYTES and image.HasField("image_domain")
    stats = text_format.Parse((Path(trained_images["statistics"]) / "Split-train" / "FeatureStats.pbtxt").read_text(),
                              statistics_pb2.DatasetFeatureStatisticsList())
    pixels = next(f for f in stats.datasets[0].features if f.path.step[0] == "image")
    assert pixels.type == statistics_pb2.FeatureNameStatistics.BYTES
    assert pixels.bytes_stats.avg_num_bytes == 144 and pixels.bytes_stats.common_stats.num_non_missing == \
        props.row_counts["train"]
    [feature] = TransformGraph.read(trained_images["transform"]).preprocessing().features
    assert (feature.name, feature.kind, feature.shape, feature.dtype) == ("image", "image", [12, 12, 1], "float32")


def test_the_model_is_served_an_image_and_tells_the_stripes_apart(trained_images, image_folder, tmp_path,
                                                                  mlflow_store, model_server) -> None:
    run = resolve(trained_images["config"], tmp_path, mlflow_store, endpoints(model_server),
                  params={"thresholds": {"accuracy": 0.9}, "change_thresholds": {}, "variants": ["dynamic_range"]})
    out = run_steps(run, DEPLOY, available=trained_images)
    assert Promotion.read(out["promotion"]).properties.labels == {"stable": 1}
    files = {kind: sorted((image_folder / kind).glob("*.png"))[:3] for kind in ("horizontal", "vertical")}
    instances = [{"image": np.frombuffer(decode(path.read_bytes(), (12, 12, 1), str(path)), np.uint8)
                  .reshape(12, 12, 1).tolist()} for paths in files.values() for path in paths]
    with RestClient(model_server.rest_url) as client:
        answers = client.predict("stripes", instances, label="stable").outputs
    assert [a["class"] for a in answers] == ["horizontal"] * 3 + ["vertical"] * 3

    # Batch inference of the same images, unlabelled (no class folders, one in a subfolder), with the champion.
    unlabelled = tmp_path / "unlabelled"
    (unlabelled / "more").mkdir(parents=True)
    names = [f"{kind[0]}{i}.png" if i < 2 else f"more/{kind[0]}{i}.png" for kind in files for i in range(3)]
    for name, path in zip(names, [p for paths in files.values() for p in paths], strict=True):
        (unlabelled / name).write_bytes(path.read_bytes())
    config = load_config(trained_images["config"])
    ctx = pipeline_context(config, str(tmp_path / "artifacts"), "batch-images", mlflow_store, None)
    uri = job.plan(ctx, config, BatchConfig(data=str(unlabelled), output=str(tmp_path / "scored")))
    scoring.score_shard(uri, 0)
    commit.commit(uri)
    scored = pq.read_table(tmp_path / "scored").to_pylist()
    by_file = {row["file"]: row["class"] for row in scored}
    assert by_file == dict(zip(names, [a["class"] for a in answers], strict=True)), "as the server answered"


def test_an_image_that_does_not_decode_is_one_line_naming_it_or_a_counted_skip(image_folder, tmp_path,
                                                                               mlflow_store) -> None:
    source = tmp_path / "images"
    write_image_folder(source, per_class=20)
    broken = source / "vertical" / "0004.png"
    broken.write_bytes(broken.read_bytes()[:60])  # truncated
    (source / "vertical" / "notes.txt").write_text("not an image: left out")
    with pytest.raises(StepRejected) as failed:
        run_step("ingest", resolve(image_pipeline(tmp_path / "a", source), tmp_path / "a", mlflow_store), inputs={})
    message = str(failed.value)
    assert f"{broken}: not a PNG or JPEG image that decodes" in message and "\n" not in message
    assert not list((tmp_path / "a" / "artifacts").rglob("*.parquet")), "nothing half-written"

    config = image_pipeline(tmp_path / "b", source, max_bad_rows=1)
    examples = Examples.read(run_step("ingest", resolve(config, tmp_path / "b", mlflow_store), inputs={})["examples"])
    assert sum(examples.properties.row_counts.values()) == 39 and examples.properties.bad_rows == 1
    assert examples.properties.bad_rows_note.startswith("1 images skipped that do not decode")


@pytest.mark.parametrize(("layout", "message"), [
    ("loose.png", "an image outside a class folder"),
    ("empty/readme.txt", "no PNG or JPEG images in class folders"),
])
def test_a_folder_that_is_not_an_image_folder_is_refused_in_one_line(layout, message, tmp_path, mlflow_store) -> None:
    source = tmp_path / "images"
    write_image_folder(source, per_class=3)
    if layout.endswith(".txt"):
        source = tmp_path / "other"
        (source / "empty").mkdir(parents=True)
    (source / layout).write_bytes((tmp_path / "images" / "vertical" / "0001.png").read_bytes())
    config = image_pipeline(tmp_path, source, format="images")
    with pytest.raises(StepRejected, match=message):
        run_step("ingest", resolve(config, tmp_path, mlflow_store), inputs={})


def test_decode_converts_and_resizes_and_names_what_does_not_decode(tmp_path) -> None:
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.full((30, 40, 3), (255, 0, 0), np.uint8)).save(path)
    grey = np.frombuffer(decode(path.read_bytes(), (6, 8, 1), "a.png"), np.uint8)
    assert grey.shape == (48,) and set(grey.tolist()) == {76}  # ITU-R 601 luma of pure red
    rgb = np.frombuffer(decode(path.read_bytes(), (3, 3, 3), "a.png"), np.uint8).reshape(3, 3, 3)
    assert (rgb == [255, 0, 0]).all()
    from tasks.data.readers import DataError

    with pytest.raises(DataError, match=r"^b.gif: not a PNG or JPEG image that decodes"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "b.gif")
        decode((tmp_path / "b.gif").read_bytes(), (4, 4, 1), "b.gif")
