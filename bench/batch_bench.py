"""Batch inference throughput: `kiln predict`'s path (plan, read the CSV with ingest's readers, type it, score it,
write Parquet part files, commit) against calling the same version folder in-process on the same batches already
in memory, in one run. Target: the job >= 0.8x the in-process calls' rows/s, for each served format.

The demo's digits model is trained and registered twice (shipped as a SavedModel and as a dynamic-range TFLite
file) in a temp KILN_HOME with MLflow on SQLite; the data is the digits CSV repeated to --rows rows. Prints a
table and writes bench/results/batch.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import common  # noqa: F401 - sets TF_USE_LEGACY_KERAS before anything imports TensorFlow

REPO = Path(__file__).resolve().parent.parent
TARGET_RATIO = 0.8
RESULTS = REPO / "bench" / "results" / "batch.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=300_000, help="rows of the scored CSV")
    parser.add_argument("--home", type=Path, default=None, help="KILN_HOME (default: a temp folder)")
    args = parser.parse_args()
    home = (args.home or Path(tempfile.mkdtemp(prefix="kiln-batch-bench-"))).resolve()
    os.environ["KILN_HOME"] = str(home)
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    versions = register_versions(home, tracking)
    data = repeat_csv(home / "data" / "digits.csv", home / "data" / "scored.csv", args.rows)
    rows = []
    for shipped, version in versions.items():
        baseline = in_process_rows_per_second(home, tracking, version, data)
        job = job_rows_per_second(home, tracking, version, data)
        rows.append({"served_format": shipped, "version": version, "rows": args.rows,
                     "in_process_rows_per_s": round(baseline), "job_rows_per_s": round(job["scoring"]),
                     "job_with_plan_and_commit_rows_per_s": round(job["total"]),
                     "ratio": round(job["scoring"] / baseline, 3), "target": TARGET_RATIO})
    report(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1) + "\n")
    return 0 if all(r["ratio"] >= TARGET_RATIO for r in rows) else 1


def register_versions(home: Path, tracking: str) -> dict[str, int]:
    """The demo model trained once and registered shipped as a SavedModel (v1) and as TFLite (v2)."""
    from infra.cli.demo_data import write_digits_csv
    from tasks.snapshot import Deployment, resolve_run
    from tasks.step_runner import run_steps

    write_digits_csv(home / "data" / "digits.csv")
    deployment = Deployment(artifact_root=str(home / "artifacts"), tracking_uri=tracking)
    config = str(REPO / "pipelines" / "digits.yaml")
    trained = run_steps(resolve_run(config, {}, deployment, "bench-train"), ["ingest", "validate", "transform", "train"])
    found = {}
    for number, (shipped, variants) in enumerate((("saved_model", []), ("tflite", ["dynamic_range"])), start=1):
        run = resolve_run(config, {"variants": variants, "thresholds": {}, "change_thresholds": {}}, deployment,
                          f"bench-{shipped}")
        run_steps(run, ["optimize", "evaluate", "register"], available=trained)
        found[shipped] = number
    return found


def repeat_csv(source: Path, target: Path, rows: int) -> Path:
    header, *lines = source.read_text().splitlines()
    with target.open("w") as out:
        out.write(header + "\n")
        for index in range(rows):
            out.write(lines[index % len(lines)] + "\n")
    return target


def _folder(home: Path, tracking: str, version: int) -> tuple[Path, Any]:
    from mlflow import MlflowClient

    from tasks.features import Preprocessing
    from tasks.model_registry import download_version

    downloaded = download_version(MlflowClient(tracking), "kiln-digits", version,
                                  Path(tempfile.mkdtemp(dir=home)))
    return downloaded.version_folder, Preprocessing.model_validate_json(downloaded.contract.read_text())


def in_process_rows_per_second(home: Path, tracking: str, version: int, data: Path) -> float:
    """The version folder called on every batch of the data, converted to served inputs beforehand."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    from tasks.batch.scoring import served_inputs
    from tasks.features import column_arrays, parse_spec
    from tasks.served_artifact import ServedModel

    folder, contract = _folder(home, tracking, version)
    model = ServedModel(folder)
    columns = parse_spec(contract.features, None)
    table = pa_csv.read_csv(data, convert_options=pa_csv.ConvertOptions(
        column_types={name: pa.float32() for name in columns}))
    batch_rows = 4096
    batches = [served_inputs(column_arrays(b, columns), contract.features)
               for b in table.select(list(columns)).to_batches(max_chunksize=batch_rows)]
    model(batches[0])  # warm-up, as the job's first batch is
    started = time.perf_counter()
    for inputs in batches:
        model(inputs)
    return table.num_rows / (time.perf_counter() - started)


def job_rows_per_second(home: Path, tracking: str, version: int, data: Path) -> dict[str, float]:
    from tasks.batch import commit, job, scoring
    from tasks.config import BatchConfig, load_config
    from tasks.snapshot import pipeline_context

    config = load_config(REPO / "pipelines" / "digits.yaml")
    ctx = pipeline_context(config, str(home / "artifacts"), f"bench-batch-v{version}", tracking, None)
    batch = BatchConfig(data=str(data), output=str(home / "scored" / f"v{version}"), version=version, overwrite=True)
    started = time.perf_counter()
    uri = job.plan(ctx, config, batch)
    stats = scoring.score_shard(uri, 0)
    summary = commit.commit(uri)
    total = time.perf_counter() - started
    assert summary["rows"] == stats["rows"]
    return {"scoring": stats["rows"] / stats["seconds"], "total": stats["rows"] / total}


def report(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"batch inference, {rows[0]['rows']:,} digits rows (CSV -> Parquet), {machine()['cpu']}")
    for column in ("served format", "in-process calls rows/s", "kiln predict rows/s", "ratio (target >= 0.8)",
                   "incl. plan + commit rows/s"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["served_format"], f"{r['in_process_rows_per_s']:,}", f"{r['job_rows_per_s']:,}",
                      f"{r['ratio']:.2f}", f"{r['job_with_plan_and_commit_rows_per_s']:,}")
    Console().print(table)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


if __name__ == "__main__":
    raise SystemExit(main())
