"""Which devices each training worker gets (tasks.training.devices): the launcher gives every worker its own slice
of the visible GPUs (NCCL refuses two workers on one device), one mirrored worker takes them all, and a request for
more GPUs than the machine has is one line."""

from __future__ import annotations

import pytest

from tasks.config import TrainConfig
from tasks.training.devices import CPU_REPLICAS_ENV, STRATEGY_ENV, DeviceError, plan_devices, visible_gpus

FOUR = ["0", "1", "2", "3"]


def test_each_worker_gets_its_own_slice_of_the_visible_gpus() -> None:
    plan = plan_devices(TrainConfig(num_workers=2), FOUR)
    assert plan.strategy == "multi_worker" and plan.devices == ["0,1", "2,3"]
    assert plan.env(1) == {STRATEGY_ENV: "multi_worker", "CUDA_VISIBLE_DEVICES": "2,3"}
    assert plan_devices(TrainConfig(num_workers=2, gpus_per_worker=1), ["4", "6", "7"]).devices == ["4", "6"]


def test_auto_mirrors_one_worker_over_several_gpus_and_runs_workers_on_cpu_without_them() -> None:
    mirrored = plan_devices(TrainConfig(), FOUR)
    assert (mirrored.strategy, mirrored.devices) == ("mirrored", ["0,1,2,3"])
    cpu = plan_devices(TrainConfig(num_workers=2), [])
    assert (cpu.strategy, cpu.devices) == ("multi_worker", [None, None]), "CPU: the environment passes through"
    assert cpu.env(0) == {STRATEGY_ENV: "multi_worker"}
    assert plan_devices(TrainConfig(), ["0"]).strategy == "multi_worker", "one GPU: the default, one worker"
    one_cpu = plan_devices(TrainConfig(strategy="mirrored"), [])
    assert (one_cpu.strategy, one_cpu.devices) == ("mirrored", [None])


@pytest.mark.parametrize(("train", "gpus", "words"), [
    (TrainConfig(num_workers=2, gpus_per_worker=3), FOUR, "gpus_per_worker 3 x 2 worker(s) needs 6 GPUs; this "
                                                          "machine has 4 (0,1,2,3) visible"),
    (TrainConfig(num_workers=3), ["0", "1"], "needs 3 GPUs; this machine has 2"),
    (TrainConfig(gpus_per_worker=1), [], "needs 1 GPUs; this machine has none visible"),
    (TrainConfig(strategy="mirrored", gpus_per_worker=8), FOUR, "needs 8 GPUs"),
])
def test_more_gpus_than_the_machine_has_is_one_line(train, gpus, words) -> None:
    with pytest.raises(DeviceError, match=words.replace("(", r"\(").replace(")", r"\)")):
        plan_devices(train, gpus)


def test_the_visible_gpus_are_cuda_visible_devices_when_set() -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == [] and visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_mirrored_with_several_workers_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match="strategy mirrored is one worker over its local GPUs; num_workers 2"):
        TrainConfig(strategy="mirrored", num_workers=2)


def _regression_files(folder) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "examples").mkdir(parents=True)
    for split, rows in (("train", 256), ("eval", 64)):
        pq.write_table(pa.table({"x": [i / rows for i in range(rows)], "y": [2.0 * i / rows for i in range(rows)]}),
                       folder / "examples" / f"{split}-0.parquet")


@pytest.mark.slow
def test_a_mirrored_worker_over_two_cpu_replicas_in_mixed_precision_serves_float32(tmp_path, monkeypatch) -> None:
    """MirroredStrategy over two logical CPU devices (KILN_CPU_REPLICAS), mixed_bfloat16 (float16 needs a GPU): the
    global batch is the per-replica batch x 2, and the exported signature still answers float32."""
    import numpy as np
    import tensorflow as tf

    from tasks.models.export import load_serving_function
    from tasks.training.launcher import run_workers
    from tests.tasks.conftest import worker_spec

    _regression_files(tmp_path)
    monkeypatch.setenv(CPU_REPLICAS_ENV, "2")
    train = TrainConfig(strategy="mirrored", mixed_precision="mixed_bfloat16", jit_compile=False, epochs=2,
                        batch_size=16)
    spec = worker_spec(tmp_path, train=train, num_train=256, num_eval=64)
    run_workers(spec, num_workers=1, timeout_seconds=300, work_dir=tmp_path / "work")
    log = (tmp_path / "work" / "worker-0.attempt1.log").read_text()
    assert "global batch 32 (2 replicas)" in log and "mixed_bfloat16" in log, "16 per replica x 2 replicas"
    serve = load_serving_function(tmp_path / "saved_model")
    answer = serve(x=tf.constant([0.25, 0.5], tf.float32))["prediction"]
    assert answer.dtype == tf.float32 and np.isfinite(answer.numpy()).all()


@pytest.mark.slow
def test_mixed_float16_without_a_gpu_warns_and_trains_in_float32(tmp_path) -> None:
    from tasks.training.launcher import run_workers
    from tests.tasks.conftest import worker_spec

    _regression_files(tmp_path)
    spec = worker_spec(tmp_path, train=TrainConfig(mixed_precision="mixed_float16", epochs=1, batch_size=32),
                       num_train=256, num_eval=64)
    run_workers(spec, num_workers=1, timeout_seconds=300, work_dir=tmp_path / "work")
    log = (tmp_path / "work" / "worker-0.attempt1.log").read_text()
    assert "mixed_float16 needs a GPU and this worker has none: training in float32" in log
    assert (tmp_path / "saved_model" / "saved_model.pb").exists()
