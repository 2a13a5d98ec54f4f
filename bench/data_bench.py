"""The data steps at scale: ingest + validate + transform on a synthetic table, against reading the same CSV
with `pyarrow.csv.read_csv` in the same run, and each step's peak memory.

Data: N rows x 30 columns (20 float, 5 int, 4 string, a string label), as CSV and as Parquet. Each step
runs in its own process, as Airflow runs a task (`run_step`, the same call the DAG makes); its wall time
and peak RSS (its process and its children, sampled every 50 ms) are recorded, and plotted over time. Then,
in one process, a training epoch of the built-in MLP streamed from the ingested shards against the same
split held in memory by tf.data; with --engine, the CSV's data steps on a local Dask cluster of 1 and of 2
worker processes.

    make bench-data                       # 1M rows (about 200 MB of CSV), --engine
    .venv/bin/python bench/data_bench.py --rows 10000000 --formats csv --no-train --engine   # flat memory, scale-out

Writes bench/results/data-<rows>.json and data-<rows>-rss.png, and prints the table. Ratios compare
within one run only: machines of this kind differ up to 3x in speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
STEPS = ("ingest", "validate", "transform")
SAMPLE_SECONDS = 0.05  # RSS of each step's process (and its children: Dask workers) every 50 ms
PIPELINE = """pipeline: bench
data:
  source: {source}
  label_column: label
  num_shards: 4{engine}
task:
  type: classification
train:
  epochs: 1
"""


def write_data(folder: Path, rows: int) -> dict[str, Path]:
    """The synthetic table as CSV and Parquet, written in chunks of 500k rows (bounded memory here too)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    words = np.array([f"w{i}" for i in range(50)])
    paths = {"csv": folder / "data.csv", "parquet": folder / "data.parquet"}
    csv_writer = parquet_writer = None
    for start in range(0, rows, 500_000):
        n = min(500_000, rows - start)
        columns = {f"f{i}": rng.normal(i, 1 + i, n).round(4) for i in range(20)}
        columns |= {f"i{i}": rng.integers(0, 100 * (i + 1), n) for i in range(5)}
        columns |= {f"s{i}": words[rng.integers(0, 10 * (i + 1), n)] for i in range(4)}
        signal = columns["f0"] + columns["f1"] / 2
        columns["label"] = np.where(signal > np.median(signal), "high", "low")
        table = pa.table(columns)
        if csv_writer is None:
            csv_writer = pa_csv.CSVWriter(paths["csv"], table.schema)
            parquet_writer = pq.ParquetWriter(paths["parquet"], table.schema)
        csv_writer.write_table(table)
        parquet_writer.write_table(table)
    csv_writer.close()
    parquet_writer.close()
    return paths


def read_baseline(csv: Path) -> float:
    import pyarrow.csv as pa_csv

    started = time.perf_counter()
    pa_csv.read_csv(csv)
    return time.perf_counter() - started


def run_child(step: str, run: str, inputs: dict[str, str] | str, samples: list[tuple[float, float]], t0: float) -> dict:
    """Run one step in a child process; its seconds, peak RSS (MB) and outputs."""
    import psutil

    command = [sys.executable, __file__, "--child", step, "--run", run,
               "--inputs", inputs if isinstance(inputs, str) else json.dumps(inputs)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    probe = psutil.Process(process.pid)
    own: list[float] = []
    while process.poll() is None:
        # Sampled, not getrusage: a child's ru_maxrss starts at its parent's RSS when it forks.
        with contextlib.suppress(psutil.Error):
            rss = (probe.memory_info().rss + sum(c.memory_info().rss for c in probe.children(recursive=True))) / 1e6
            own.append(rss)
            samples.append((time.perf_counter() - t0, rss))
        time.sleep(SAMPLE_SECONDS)
    seconds = time.perf_counter() - started
    output = process.stdout.read() if process.stdout else ""
    if process.returncode:
        raise SystemExit(f"{step} failed (exit {process.returncode}); run it by hand: {' '.join(command)}")
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(max(own, default=0.0)),
            "outputs": json.loads(output.splitlines()[-1])}


def child(step: str, run: str, inputs: str) -> None:
    import common  # noqa: F401 - TF_USE_LEGACY_KERAS before the steps load TensorFlow
    from tasks.step_runner import run_step

    if step == "train_epoch":
        print(json.dumps(train_epoch(json.loads(inputs))))
        return
    if step == "write":
        print(json.dumps({k: str(v) for k, v in write_data(Path(run), int(inputs)).items()}))
        return
    if step == "read_csv":
        print(json.dumps({"seconds": read_baseline(Path(run))}))
        return
    print(json.dumps(run_step(step, run, inputs=json.loads(inputs))))


def train_epoch(inputs: dict[str, str], batch_size: int = 256) -> dict:
    """Examples/s of one epoch of the built-in MLP, fed by the streamed Parquet shards (data.memory_budget 0:
    no cache) and by tf.data over the same split held in memory, in this one process."""
    import tensorflow as tf

    from tasks.artifacts.examples import Examples
    from tasks.artifacts.transform import TransformGraph
    from tasks.features import dataset, load_arrays
    from tasks.models.assemble import build_model, compile_model

    preprocessing = TransformGraph.read(inputs["transform"]).preprocessing()
    examples = Examples.read(inputs["examples"])
    files, rows = examples.split_files("train"), examples.properties.row_counts["train"]
    features, label = preprocessing.features, preprocessing.label
    steps = rows // batch_size

    def epoch(data: object) -> float:
        model = build_model(preprocessing, "mlp", {})
        compile_model(model, label, 0.002)
        model.fit(data, epochs=1, steps_per_epoch=min(steps, 20), verbose=0)  # warm: graph built, files opened
        started = time.perf_counter()
        model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
        return steps * batch_size / (time.perf_counter() - started)

    streamed = epoch(dataset(files, features, label, batch_size, shuffle_seed=7, repeat=True, memory_budget=0))
    arrays, targets = load_arrays(files, features, label)
    in_memory = tf.data.Dataset.from_tensor_slices((arrays, targets)).shuffle(10_000, seed=7).repeat() \
        .batch(batch_size).prefetch(tf.data.AUTOTUNE)
    held = epoch(in_memory)
    return {"streamed_examples_per_s": round(streamed), "in_memory_examples_per_s": round(held),
            "ratio": round(streamed / held, 3)}


def bench_format(fmt: str, source: Path, home: Path, samples: list[tuple[float, float]], t0: float,
                 engine_workers: int = 0, train: bool = False) -> dict:
    """The data steps on one source: in-process, or (engine_workers > 0) on a local Dask cluster of that many."""
    from tasks.snapshot import Deployment, resolve_run

    label = f" dask x{engine_workers}" if engine_workers else ""
    name = f"{fmt}-dask{engine_workers}" if engine_workers else fmt
    config = home / f"bench-{name}.yaml"
    engine = f"\n  engine: dask\n  engine_workers: {engine_workers}" if engine_workers else ""
    config.write_text(PIPELINE.format(source=json.dumps(str(source)), engine=engine))
    deployment = Deployment(artifact_root=str(home / "artifacts"), tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = resolve_run(str(config), {}, deployment, f"bench_{name.replace('-', '_')}")
    result: dict = {}
    outputs: dict[str, str] = {}
    wanted = {"ingest": [], "validate": ["examples"], "transform": ["examples", "schema"]}
    for step in STEPS:
        measured = run_child(step, run, {k: outputs[k] for k in wanted[step]}, samples, t0)
        outputs |= measured.pop("outputs")
        result[step] = measured
        print(f"  {fmt}{label} {step}: {measured['seconds']} s, peak RSS {measured['peak_rss_mb']} MB", flush=True)
    if train:
        result["train_epoch"] = run_child("train_epoch", run, outputs, [], t0)["outputs"]
        print(f"  {fmt} training epoch: {result['train_epoch']}", flush=True)
    return result


def plot(samples: dict[str, list[tuple[float, float]]], path: Path, rows: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.5))
    for fmt, points in samples.items():
        axis.plot([t for t, _ in points], [rss for _, rss in points], label=fmt, linewidth=1)
    axis.set_xlabel("seconds (ingest, validate, transform: one process each)")
    axis.set_ylabel("RSS of the step's process (MB)")
    axis.set_title(f"kiln data steps, {rows:,} rows x 30 columns")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="csv,parquet", help="comma-separated: csv, parquet")
    parser.add_argument("--engine", action="store_true", help="also on a local Dask cluster of 1 and 2 workers")
    parser.add_argument("--no-train", dest="train", action="store_false",
                        help="skip the training epoch (streamed vs in memory)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.run, args.inputs)
        return
    from rich.console import Console
    from rich.table import Table

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-data-") as tmp:
        home = Path(tmp)
        # In children, like the steps: this process stays small.
        print(f"writing {args.rows:,} rows ...", flush=True)
        paths = {k: Path(v) for k, v in run_child("write", str(home), str(args.rows), [], time.perf_counter())
                 ["outputs"].items()}
        sizes = {fmt: path.stat().st_size for fmt, path in paths.items()}
        baseline = run_child("read_csv", str(paths["csv"]), "0", [], time.perf_counter())["outputs"]["seconds"]
        print(f"pyarrow.csv.read_csv: {baseline:.2f} s ({sizes['csv'] / 1e6:.0f} MB)", flush=True)
        results, samples = {}, {}
        for fmt in args.formats.split(","):
            samples[fmt] = []
            results[fmt] = bench_format(fmt, paths[fmt], home, samples[fmt], time.perf_counter(),
                                        train=args.train and fmt == "csv")
        if args.engine:
            for workers in (1, 2):
                name = f"csv on dask x{workers}"
                samples[name] = []
                results[name] = bench_format("csv", paths["csv"], home, samples[name], time.perf_counter(),
                                             engine_workers=workers)
    RESULTS.mkdir(exist_ok=True)
    record = {"rows": args.rows, "bytes": sizes, "read_csv_seconds": round(baseline, 2), "steps": results,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d")}
    stem = f"data-{args.rows // 1_000_000}M" if args.rows >= 1_000_000 else f"data-{args.rows}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=1))
    plot(samples, RESULTS / f"{stem}-rss.png", args.rows)

    table = Table(title=f"data steps, {args.rows:,} rows x 30 columns (pyarrow.csv.read_csv: {baseline:.2f} s)")
    for column in ("format", *STEPS, "data steps", "x read_csv", "peak RSS (MB)"):
        table.add_column(column, justify="right")
    for fmt, result in results.items():
        steps = {s: result[s] for s in STEPS}
        total = sum(s["seconds"] for s in steps.values())
        table.add_row(fmt, *(f"{steps[s]['seconds']:.1f} s" for s in STEPS), f"{total:.1f} s",
                      f"{total / baseline:.1f}x", " / ".join(str(steps[s]["peak_rss_mb"]) for s in STEPS))
    Console().print(table)
    if "dask x1" in " ".join(results) and "csv on dask x2" in results:
        one, two = (sum(results[f"csv on dask x{n}"][s]["seconds"] for s in STEPS) for n in (1, 2))
        print(f"dask: 2 workers {one / two:.2f}x the speed of 1 worker")
    if "train_epoch" in results.get("csv", {}):
        print(f"training epoch, streamed / in memory: {results['csv']['train_epoch']}")


if __name__ == "__main__":
    main()
