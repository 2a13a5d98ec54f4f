"""Tuning fanned out over the hybrid fleet: the same 8-trial study at tune.parallelism 2 against 1.

`kiln up --profile hybrid --no-cluster` (Airflow and MLflow on Postgres, a Celery worker of concurrency 2 on
queue onprem, Redis), then one run of each of two copies of the digits pipeline that differ only in
`tune.parallelism` (its tune instances on Celery queue onprem, the default pool), early stopping off so both
do the same work. The tune phase is the span
from the first tune instance's start to the last one's end, from Airflow's task-instance records. Target: >= 1.6x
on 2 cores. Needs the machine's Postgres and Redis (KILN_POSTGRES_URL, KILN_REDIS_URL). Prints a table and writes
bench/results/tune.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from common.processes import free_port
from infra.cli.demo_data import write_digits_csv
from infra.cli.runner import airflow_client
from infra.stack.stack import Stack

REPO = Path(__file__).resolve().parents[1]
KILN = str(Path(sys.executable).parent / "kiln")
TARGET = 1.6
TUNE = """
tune:
  objective: accuracy
  trials: {trials}
  parallelism: {parallelism}
  epochs: {epochs}
  early_stopping: {early_stopping}
  space:
    train.learning_rate: {{type: float, low: 0.0005, high: 0.01, log: true}}
    train.batch_size: {{type: choice, values: [32, 64]}}
    train.hparams.dense_units: {{type: choice, values: [64, 128]}}
"""


def pipeline(folder: Path, parallelism: int, trials: int, epochs: int, early_stopping: bool) -> Path:
    name = f"tuned-p{parallelism}"
    path = folder / f"{name}.yaml"
    text = ((REPO / "pipelines" / "digits.yaml").read_text()
            .replace("pipeline: digits", f"pipeline: {name}")
            .replace("digits.schema.pbtxt", str(REPO / "pipelines" / "digits.schema.pbtxt"))
            .replace("model_name: digits", f"model_name: {name}")
            .replace("model_name: kiln-digits", f"model_name: kiln-{name}")
            .replace("placement:\n  default: {executor: LocalExecutor}",
                     "placement:\n  profile: hybrid\n  steps:\n"
                     "    tune: {executor: CeleryExecutor, queue: onprem, pool: default_pool}"))
    path.write_text(text + TUNE.format(trials=trials, parallelism=parallelism, epochs=epochs,
                                       early_stopping=str(early_stopping).lower()))
    return path


def tune_span(stack: Stack, dag_id: str, run_id: str) -> tuple[float, list[dict[str, Any]]]:
    records = airflow_client(stack)._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
    tune = [ti for ti in records["task_instances"] if ti["task_id"] == "tune"]
    starts = [datetime.fromisoformat(ti["start_date"]) for ti in tune]
    ends = [datetime.fromisoformat(ti["end_date"]) for ti in tune]
    return (max(ends) - min(starts)).total_seconds(), [
        {k: ti[k] for k in ("map_index", "executor", "queue", "duration")} for ti in tune]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=12, help="per trial")
    parser.add_argument("--early-stopping", action="store_true",
                        help="prune trials (off by default: both runs then do the same work)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kiln-tune-bench-"))
    home = root / "kiln"
    env = {**os.environ, "KILN_HOME": str(home)}
    for name in ("AIRFLOW", "MLFLOW", "SERVING_REST", "SERVING_GRPC", "AIRFLOW_WORKER_LOGS", "AIRFLOW_TRIGGER_LOGS"):
        env[f"KILN_{name}_PORT"] = str(free_port())

    def kiln(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KILN, *argv], env=env, cwd=root, capture_output=True, text=True, timeout=3600)

    up = kiln("up", "--profile", "hybrid", "--no-cluster")
    if up.returncode:
        print(up.stderr[-3000:], file=sys.stderr)
        return 1
    results: dict[int, dict[str, Any]] = {}
    try:
        data = write_digits_csv(home / "data" / "digits.csv")
        stack = Stack.load(home)
        for parallelism in (1, 2):
            config = pipeline(root, parallelism, args.trials, args.epochs, args.early_stopping)
            ran = kiln("run", "--json", str(config), "-p", f"data_source={data}", "-p", "variants=[]",
                       "-p", "thresholds={}", "-p", "change_thresholds={}")
            if ran.returncode:
                print(ran.stderr[-3000:], file=sys.stderr)
                return 1
            summary = json.loads(ran.stdout)
            span, instances = tune_span(stack, summary["dag_id"], summary["run_id"])
            results[parallelism] = {"tune_seconds": span, "instances": instances, "tune": summary["tune"],
                                    "wall_seconds": summary["wall_seconds"]}
    finally:
        kiln("down")

    speedup = results[1]["tune_seconds"] / results[2]["tune_seconds"]
    table = Table(title=f"{args.trials} trials x {args.epochs} epochs (early stopping "
                        f"{'on' if args.early_stopping else 'off'}), hybrid fleet ({platform.machine()}, "
                        f"{os.cpu_count()} cores)")
    for column in ("parallelism", "tune phase s", "trials", "completed", "pruned", "best accuracy", "instances"):
        table.add_column(column)
    for parallelism, result in results.items():
        tune = result["tune"]
        table.add_row(str(parallelism), f"{result['tune_seconds']:.1f}", str(tune["trials"]), str(tune["completed"]),
                      str(tune["pruned"]), f"{tune['best']['metric']['accuracy']:.4f}",
                      ", ".join(f"{i['executor']}/{i['queue']}" for i in result["instances"]))
    Console().print(table)
    print(f"speedup {speedup:.2f}x (target >= {TARGET}x): {'met' if speedup >= TARGET else 'MISSED'}")
    out = REPO / "bench" / "results" / "tune.json"
    out.write_text(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} cores", "speedup": speedup,
                               "trials": args.trials, "epochs": args.epochs, "early_stopping": args.early_stopping,
                               "runs": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
