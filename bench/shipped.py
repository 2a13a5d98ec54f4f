"""What ships, and how it serves: for the shipped example pipelines, the artifact optimize selected and evaluate
blessed (variant, format, bytes, gzip bytes), its metric beside the trained float model's, and its served
latency against the trained SavedModel's, both served by kiln-model-server (--prefer_tflite_model, as every kiln
server runs) in the same run.

Each pipeline runs through its own steps in-process (ingest .. optimize, evaluate) on its demo data with its
YAML's settings. Latency: REST, one row per request, one request after another, after a warm-up; p50/p99 in ms.
Writes bench/results/shipped.json and prints the table. Ratios compare within this run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

import common  # noqa: F401 - TF_USE_LEGACY_KERAS before the steps load TensorFlow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "shipped.json"
PIPELINES = ("digits", "cancer")


def ship(pipeline: str, home: Path) -> dict:
    """Run the pipeline up to evaluate; its evaluation, its optimize record and the two folders to serve."""
    from infra.cli.demo_data import DATASETS
    from tasks.artifacts.evaluation import ModelEvaluation
    from tasks.artifacts.model import Model
    from tasks.artifacts.optimized import OptimizedModel
    from tasks.snapshot import Deployment, resolve_run
    from tasks.step_runner import run_steps

    os.environ["KILN_HOME"] = str(home)  # the YAMLs name ${KILN_HOME}/data/<pipeline>.csv
    csv = DATASETS[pipeline](home / "data" / f"{pipeline}.csv")
    config = REPO / "pipelines" / f"{pipeline}.yaml"
    deployment = Deployment(artifact_root=str(home / "artifacts"), tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = resolve_run(str(config), {"data_source": str(csv), "thresholds": {}, "change_thresholds": {}},
                      deployment, f"bench__{pipeline}")
    started = time.monotonic()
    out = run_steps(run, ["ingest", "validate", "transform", "train", "optimize", "evaluate"])
    optimized = OptimizedModel.read(out["optimized"])
    return {"evaluation": ModelEvaluation.read(out["evaluation"]).properties, "optimized": optimized.properties,
            "shipped_folder": Path(optimized.version_folder), "trained": Model.read(out["model"]),
            "examples": out["examples"], "seconds": round(time.monotonic() - started, 1)}


def serving_latency(folders: dict[str, Path], instances: list[dict], requests: int, home: Path) -> dict:
    """p50/p99 ms of one-row REST predicts for each model folder, served side by side by one kiln-model-server."""
    import shutil

    from serving_procs import VENV_BIN, http_get_ok, server_process  # beside this script

    from common.processes import free_ports
    from serving.client import RestClient

    config = home / "models.config"
    entries = []
    for name, folder in folders.items():
        shutil.copytree(folder, home / "models" / name / "1")
        entries.append(f'config {{ name: "{name}" base_path: "{home / "models" / name}" '
                       f'model_platform: "tensorflow" }}')
    config.write_text("model_config_list { " + " ".join(entries) + " }\n")
    grpc_port, rest_port = free_ports(2)
    rest_url = f"http://127.0.0.1:{rest_port}"
    argv = [str(VENV_BIN / "kiln-model-server"), f"--port={grpc_port}", f"--rest_api_port={rest_port}",
            f"--model_config_file={config}", "--prefer_tflite_model=true"]
    measured = {}
    with server_process("kiln-model-server", argv, home / "server.log",
                        lambda: http_get_ok(f"{rest_url}/v1/models/shipped")), RestClient(rest_url) as client:
        for name in folders:
            for row in instances[:50]:
                client.predict(name, [row])
            times = [client.predict(name, [instances[i % len(instances)]]).latency_ms for i in range(requests)]
            measured[name] = {"p50_ms": round(float(np.percentile(times, 50)), 3),
                              "p99_ms": round(float(np.percentile(times, 99)), 3)}
    return measured


def measure(pipeline: str, requests: int) -> dict:
    from common.digest import folder_bytes
    from tasks.artifacts.examples import Examples
    from tasks.features import json_instances, load_arrays
    from tasks.serving_bundle import write_warmup_requests

    home = Path(tempfile.mkdtemp(prefix=f"kiln-shipped-{pipeline}-"))
    shipped = ship(pipeline, home)
    trained, evaluation = shipped["trained"], shipped["evaluation"]
    preprocessing = trained.preprocessing
    inputs, _ = load_arrays(Examples.read(shipped["examples"]).split_files("eval"), preprocessing.features,
                            preprocessing.label, limit=200)
    # The trained SavedModel as it would ship uncompressed: the same warmup requests beside it.
    float_folder = home / "float-version"
    import shutil

    shutil.copytree(trained.saved_model, float_folder)
    (float_folder / "assets.extra").mkdir()
    write_warmup_requests(float_folder / "assets.extra" / "tf_serving_warmup_requests", pipeline,
                          preprocessing.features, {k: v[:8] for k, v in inputs.items()})
    latency = serving_latency({"shipped": shipped["shipped_folder"], "float": float_folder},
                              json_instances(inputs), requests, home)
    record = shipped["optimized"].shipped
    return {"pipeline": pipeline, "variant": record.variant, "format": record.format, "bytes": record.bytes,
            "gzip_bytes": record.gzip_bytes, "float_saved_model_bytes": folder_bytes(float_folder),
            "metric_name": shipped["optimized"].metric_name,
            "metric": evaluation.metrics[shipped["optimized"].metric_name],
            "float_metric": evaluation.metrics_trained[shipped["optimized"].metric_name],
            "served": latency["shipped"], "float_served": latency["float"], "sha256": record.sha256,
            "pipeline_seconds": shipped["seconds"]}


def print_table(console: Console, rows: list[dict]) -> None:
    table = Table(title="what ships (bench/shipped.py)")
    for column in ("pipeline", "shipped", "format", "bytes", "gzip bytes", "metric", "float metric",
                   "served p50/p99 ms", "SavedModel p50/p99 ms", "size / SavedModel"):
        table.add_column(column, justify="left" if column in ("pipeline", "shipped", "format") else "right")
    for r in rows:
        table.add_row(r["pipeline"], r["variant"], r["format"], f"{r['bytes']:,}", f"{r['gzip_bytes']:,}",
                      f"{r['metric_name']} {r['metric']:.4f}", f"{r['float_metric']:.4f}",
                      f"{r['served']['p50_ms']:.2f} / {r['served']['p99_ms']:.2f}",
                      f"{r['float_served']['p50_ms']:.2f} / {r['float_served']['p99_ms']:.2f}",
                      f"{r['bytes'] / r['float_saved_model_bytes']:.2f}")
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="timed one-row REST requests per model")
    parser.add_argument("--pipeline", action="append", choices=PIPELINES, help="default: all")
    args = parser.parse_args()
    console = Console()
    rows = [measure(pipeline, args.requests) for pipeline in args.pipeline or PIPELINES]
    print_table(console, rows)
    RESULTS.write_text(json.dumps({"machine": {"processor": platform.processor() or platform.machine(),
                                               "cpus": os.cpu_count(), "python": platform.python_version()},
                                   "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                   "requests": args.requests, "rows": rows}, indent=1))
    console.print(f"written {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
