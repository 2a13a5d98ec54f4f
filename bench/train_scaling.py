"""Training throughput as workers and replicas are added, on whatever devices this machine has.

The demo's digits data (repeated to --rows rows) goes through ingest, validate and transform once; then the
training workers are launched as the train step launches them, for: 1 worker; 2 workers (MultiWorkerMirroredStrategy
on loopback); 1 worker with 1 replica and with 2 replicas (MirroredStrategy: over 2 GPUs when there are, else over 2
logical CPU devices of the one CPU). Examples/s is the train split over an epoch's time, median of the epochs after
the first. Scaling efficiency = examples/s with 2 / (2 x examples/s with 1).

--gpu is a ready check for a GPU box: it fails unless TensorFlow sees a GPU, then prints the devices, the NCCL
all-reduce in use, and examples/s with mixed_float16 on. Writes bench/results/train_scaling.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import common  # noqa: F401 - sets TF_USE_LEGACY_KERAS before anything imports TensorFlow

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results" / "train_scaling.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=40_000, help="rows of the training data")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128, help="per replica")
    parser.add_argument("--gpu", action="store_true", help="a GPU box's ready check (mixed_float16, NCCL)")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="kiln-train-bench-"))
    spec = prepared_spec(home, args.rows, args.epochs, args.batch_size)
    gpus = devices()
    if args.gpu and not gpus["gpus"]:
        print("--gpu: TensorFlow sees no GPU here (check the driver, CUDA_VISIBLE_DEVICES and the tensorflow[and-cuda] "
              "wheel)")
        return 1
    precision = "mixed_float16" if args.gpu else None
    runs = {
        "1 worker": measure(spec, home, "multi_worker", 1, precision),
        "2 workers": measure(spec, home, "multi_worker", 2, precision),
        "1 replica": measure(spec, home, "mirrored", 1, precision),
        "2 replicas": measure(spec, home, "mirrored", 2, precision),
    }
    efficiency = {
        "workers": round(runs["2 workers"]["examples_per_s"] / (2 * runs["1 worker"]["examples_per_s"]), 3),
        "replicas": round(runs["2 replicas"]["examples_per_s"] / (2 * runs["1 replica"]["examples_per_s"]), 3),
    }
    report(runs, efficiency, gpus)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"devices": gpus, "rows": args.rows, "batch_per_replica": args.batch_size,
                                   "runs": runs, "efficiency": efficiency}, indent=1) + "\n")
    return 0


def prepared_spec(home: Path, rows: int, epochs: int, batch_size: int) -> Any:
    """The digits data through ingest -> validate -> transform; the TrainSpec the train step would write."""
    from infra.cli.demo_data import write_digits_csv
    from tasks.artifacts.examples import Examples
    from tasks.artifacts.transform import TransformGraph
    from tasks.config import TrainConfig, load_config
    from tasks.snapshot import Deployment, resolve_run
    from tasks.step_runner import run_steps
    from tasks.training.spec import TrainSpec

    source = write_digits_csv(home / "digits-small.csv")
    header, *lines = Path(source).read_text().splitlines()
    data = home / "data" / "digits.csv"
    data.parent.mkdir(parents=True)
    data.write_text("\n".join([header, *(lines[i % len(lines)] for i in range(rows))]) + "\n")
    os.environ["KILN_HOME"] = str(home)
    deployment = Deployment(artifact_root=str(home / "artifacts"), tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = resolve_run(str(REPO / "pipelines" / "digits.yaml"), {}, deployment, "train-bench")
    out = run_steps(run, ["ingest", "validate", "transform"])
    examples, transform = Examples.read(out["examples"]), TransformGraph.read(out["transform"])
    config = load_config(REPO / "pipelines" / "digits.yaml").train
    return TrainSpec(train_files=examples.split_files("train"), eval_files=examples.split_files("eval"),
                     num_train=examples.properties.row_counts["train"], num_eval=examples.properties.row_counts["eval"],
                     preprocessing=transform.preprocessing(), model=config.model, hparams=config.hparams,
                     train=TrainConfig(**{**config.model_dump(), "epochs": epochs, "batch_size": batch_size}),
                     saved_model_dir="", metrics_path="", backup_dir="", scratch_dir="")


def measure(spec: Any, home: Path, strategy: str, count: int, precision: str | None) -> dict[str, Any]:
    from tasks.training.devices import CPU_REPLICAS_ENV
    from tasks.training.launcher import read_metrics, run_workers

    folder = home / f"{strategy}-{count}"
    train = spec.train.model_copy(update={"strategy": strategy, "num_workers": count if strategy == "multi_worker"
                                          else 1, "mixed_precision": precision})
    run = spec.model_copy(update={"train": train, "saved_model_dir": str(folder / "saved_model"),
                                  "metrics_path": str(folder / "metrics.jsonl"), "backup_dir": str(folder / "backup"),
                                  "scratch_dir": str(folder / "scratch")})
    os.environ[CPU_REPLICAS_ENV] = str(count) if strategy == "mirrored" else "1"
    run_workers(run, train.num_workers, timeout_seconds=3600, work_dir=folder / "work")
    seconds = [r["epoch_seconds"] for r in read_metrics(run.metrics_path)][1:]
    per_second = spec.num_train / statistics.median(seconds)
    return {"strategy": strategy, "count": count, "epoch_seconds": seconds, "examples_per_s": round(per_second)}


def devices() -> dict[str, Any]:
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {"gpus": gpus, "cpus": os.cpu_count(), "all_reduce": "NCCL" if gpus else "ring / reduction to one CPU"}


def report(runs: dict[str, dict[str, Any]], efficiency: dict[str, float], found: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    where = f"{len(found['gpus'])} GPUs" if found["gpus"] else f"CPU only ({found['cpus']} cores)"
    table = Table(title=f"training throughput, digits CNN, {where}, all-reduce: {found['all_reduce']}")
    for column in ("run", "strategy", "examples/s", "epoch seconds (after the first)"):
        table.add_column(column)
    for name, run in runs.items():
        table.add_row(name, run["strategy"], f"{run['examples_per_s']:,}", ", ".join(f"{s:.2f}" for s in
                                                                                 run["epoch_seconds"]))
    Console().print(table)
    Console().print(f"scaling efficiency: 2 workers {efficiency['workers']:.0%}, 2 replicas {efficiency['replicas']:.0%}")


if __name__ == "__main__":
    raise SystemExit(main())
