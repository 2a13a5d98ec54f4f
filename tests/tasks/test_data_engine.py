"""data.engine: dask runs the data steps in partitions on a real local Dask cluster (two worker processes) and
gives what the in-process default gives: the same rows in the same splits, the same statistics and the same
preprocessing. The source is cut in byte ranges small enough that every worker gets several."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.artifacts.examples import SPLITS, Examples
from tasks.artifacts.statistics import ExampleStatistics
from tasks.artifacts.transform import TransformGraph
from tasks.data import partitions
from tasks.step_runner import run_step
from tests.tasks.conftest import churn_pipeline, resolve

DASK = {"engine": "dask", "engine_workers": 2, "partition_bytes": "4KiB"}


def data_steps(config: Path, root: Path, mlflow_store: str) -> dict[str, str]:
    snapshot = resolve(config, root, mlflow_store)
    outputs = run_step("ingest", snapshot, inputs={})
    outputs |= run_step("validate", snapshot, inputs={"examples": outputs["examples"]})
    outputs |= run_step("transform", snapshot, inputs={"examples": outputs["examples"], "schema": outputs["schema"]})
    return outputs


def rows(examples: Examples, split: str) -> list[str]:
    return sorted(repr(row) for batch in examples.batches(split) for row in batch.to_pylist())


@pytest.mark.slow
def test_the_dask_engine_gives_what_the_process_gives(churn_csv, tmp_path, mlflow_store) -> None:
    assert len(partitions.plan(str(churn_csv), None, partition_bytes=4096)) >= 4
    local = data_steps(churn_pipeline(tmp_path / "local", churn_csv), tmp_path / "local", mlflow_store)
    dask = data_steps(churn_pipeline(tmp_path / "dask", churn_csv, data=DASK), tmp_path / "dask", mlflow_store)

    here, there = Examples.read(local["examples"]), Examples.read(dask["examples"])
    assert there.properties.num_shards > here.properties.num_shards, "one set of shards per partition"
    assert here.properties.source_sha256 == there.properties.source_sha256
    assert here.properties.columns == there.properties.columns
    for split in SPLITS:
        assert rows(here, split) == rows(there, split)

    for split in SPLITS:
        ours, theirs = (ExampleStatistics.read(o["statistics"]).statistics(split).datasets[0] for o in (local, dask))
        assert ours.num_examples == theirs.num_examples
        for a, b in zip(ours.features, theirs.features, strict=True):
            if a.HasField("num_stats"):
                assert (a.num_stats.min, a.num_stats.max) == (b.num_stats.min, b.num_stats.max)
                assert a.num_stats.mean == pytest.approx(b.num_stats.mean, rel=1e-9)
                assert a.num_stats.std_dev == pytest.approx(b.num_stats.std_dev, rel=1e-9)
            else:
                assert a.string_stats.unique == b.string_stats.unique
                assert list(a.string_stats.top_values) == list(b.string_stats.top_values)

    ours, theirs = (TransformGraph.read(o["transform"]).preprocessing() for o in (local, dask))
    assert ours.label == theirs.label and ours.num_examples == theirs.num_examples
    for a, b in zip(ours.features, theirs.features, strict=True):
        assert a.vocabulary == b.vocabulary
        if a.mean is None:
            assert b.mean is None and b.variance is None
        else:
            assert a.mean == pytest.approx(b.mean, rel=1e-9) and a.variance == pytest.approx(b.variance, rel=1e-9)


def test_byte_ranges_hold_every_row_once(tmp_path) -> None:
    source = tmp_path / "d.csv"
    source.write_text("a,b\n" + "".join(f"{i},{'x' * (i % 7)}\n" for i in range(500)))
    seen = []
    for count in (1, 2, 3, 7, 64):
        seen = [int(v) for p in partitions.plan(str(source), None, partitions=count)
                for batch in partitions.batches(p) for v in batch.columns["a"].to_pylist()]
        assert seen == list(range(500)), count


@pytest.mark.slow
def test_an_image_folder_ingests_on_the_dask_engine_as_in_the_process(tmp_path, mlflow_store) -> None:
    from tests.images import write_image_folder
    from tests.tasks.test_image_folders import image_pipeline

    folder = write_image_folder(tmp_path / "stripes", per_class=12)
    assert len(partitions.plan(str(folder), None, partition_bytes=4096, image_shape=(12, 12, 1))) >= 4
    here, there = (Examples.read(run_step("ingest", resolve(image_pipeline(tmp_path / where, folder, **data),
                                                            tmp_path / where, mlflow_store), inputs={})["examples"])
                   for where, data in (("local", {}), ("dask", DASK)))
    assert here.properties.source_sha256 == there.properties.source_sha256, "the folder's digest: not the cut's"
    assert here.properties.columns == there.properties.columns
    for split in SPLITS:
        assert rows(here, split) == rows(there, split)
