"""Compression benchmark: every optimize variant of two CNNs, measured the way the pipeline measures them
(the optimize step itself: LiteRT, one thread, the eval split), against the float32 TFLite file of the
same model in the same run.

Models: the demo's digits CNN (8x8, scikit-learn's digits) and a larger CNN on 28x28 synthetic images
(four shapes with noise; about 420,000 parameters). Targets (tfmot/TFLite documentation anchors):
int8 file >= 3.5x smaller than float32; 80 %-sparse + int8, gzip'd, >= 10x smaller than the float32
file gzip'd; the selected variant within 1 point of the float model on digits; int8 batch-1 latency
<= 0.7x float32 on the larger model. Writes bench/results/compression.json and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

import common  # noqa: F401 - TF_USE_LEGACY_KERAS before the steps load TensorFlow

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "compression.json"
SIDE = 28
SHAPES = ("horizontal", "vertical", "diagonal", "ring")


def synthetic_images(path: Path, rows: int, seed: int = 3) -> Path:
    """28x28 grey images of four shapes at random positions and thicknesses, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([f"p{i}" for i in range(SIDE * SIDE)] + ["shape"])
        for index in range(rows):
            shape = SHAPES[index % len(SHAPES)]
            c, w = rng.integers(6, SIDE - 6), rng.integers(2, 5)
            if shape == "horizontal":
                image = (abs(yy - c) < w) * 1.0
            elif shape == "vertical":
                image = (abs(xx - c) < w) * 1.0
            elif shape == "diagonal":
                image = (abs(xx - yy - (c - SIDE // 2)) < w) * 1.0
            else:
                radius = np.hypot(yy - SIDE / 2, xx - SIDE / 2)
                image = (abs(radius - c / 2 - 3) < w / 2 + 0.5) * 1.0
            image = np.clip(image + rng.normal(0, 0.35, image.shape), 0, 1)
            writer.writerow([f"{v:.2f}" for v in image.ravel()] + [shape])
    return path


LARGE_YAML = """
pipeline: shapes
data: {{source: {source}, label_column: shape}}
task: {{type: classification}}
transform: {{feature_groups: {{pixels: ["p*"]}}}}
train:
  model: cnn
  hparams: {{image_shape: [28, 28, 1], filters: [32, 64], dense_units: 32}}
  epochs: 6
  batch_size: 64
  learning_rate: 0.002
optimize: {{latency_runs: {runs}, fine_tune_epochs: 2}}
"""


def run_pipeline(config: Path, home: Path, run_id: str, params: dict) -> dict:
    """ingest -> train -> optimize through the pipeline's own steps; the Optimized properties."""
    from tasks.artifacts.model import Model
    from tasks.artifacts.optimized import OptimizedModel
    from tasks.snapshot import Deployment, resolve_run
    from tasks.step_runner import run_steps

    deployment = Deployment(artifact_root=str(home / "artifacts"), tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    run = resolve_run(str(config), params, deployment, run_id)
    started = time.monotonic()
    outputs = run_steps(run, ["ingest", "validate", "transform", "train"])
    trained = time.monotonic()
    outputs = run_steps(run, ["optimize"], available=outputs)
    optimized = OptimizedModel.read(outputs["optimized"]).properties
    params_count = _parameters(Model.read(outputs["model"]).saved_model)
    return {"optimize": json.loads(optimized.model_dump_json()), "parameters": params_count,
            "train_seconds": round(trained - started, 1), "optimize_seconds": round(time.monotonic() - trained, 1)}


def _parameters(saved_model: str) -> int:
    import tf_keras as keras

    return int(keras.models.load_model(saved_model).count_params())


def ratios(result: dict) -> dict:
    optimize = result["optimize"]
    base = optimize["baseline"]
    by = {v["name"]: v for v in optimize["variants"]}
    pruned_int8 = min((by[n] for n in ("pruned_int8", "pruned_qat_int8")), key=lambda v: v["gzip_bytes"])
    selected = by.get(optimize["selected"], base)
    return {
        "int8_size_ratio": base["bytes"] / by["int8"]["bytes"],
        "sparse_int8_gzip_ratio": base["gzip_bytes"] / pruned_int8["gzip_bytes"],
        "sparse_int8_variant": pruned_int8["name"],
        "int8_latency_ratio": by["int8"]["latency_ms_p50"] / base["latency_ms_p50"],
        "selected": optimize["selected"],
        "selected_metric_loss_points": (base["metric"] - selected["metric"]) * 100,
    }


def print_table(console: Console, title: str, result: dict) -> None:
    optimize = result["optimize"]
    table = Table(title=title)
    for column in ("variant", "accuracy", "bytes", "gzip bytes", "p50 ms", "p99 ms", "sparsity", "budget"):
        table.add_column(column, justify="left" if column in ("variant", "budget") else "right")
    for v in [optimize["baseline"], *optimize["variants"]]:
        name = f"{v['name']} (selected)" if v["name"] == optimize["selected"] else v["name"]
        if v["skipped_reason"]:
            table.add_row(name, f"skipped: {v['skipped_reason']}", "", "", "", "", "", "")
            continue
        table.add_row(name, f"{v['metric']:.4f}", f"{v['bytes']:,}", f"{v['gzip_bytes']:,}", f"{v['latency_ms_p50']:.3f}",
                      f"{v['latency_ms_p99']:.3f}", f"{v['sparsity']:.1%}", "within" if v["within_budget"] else "over")
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-runs", type=int, default=2000, help="batch-1 calls timed per variant")
    parser.add_argument("--images", type=int, default=2400, help="rows of the synthetic 28x28 data set")
    args = parser.parse_args()
    console = Console()
    home = Path(tempfile.mkdtemp(prefix="kiln-compression-"))
    os.environ["KILN_HOME"] = str(home)
    from infra.cli.demo_data import write_digits_csv

    write_digits_csv(home / "data" / "digits.csv")
    digits = yaml.safe_load((REPO / "pipelines" / "digits.yaml").read_text())
    digits["data"]["schema_path"] = str(REPO / "pipelines" / digits["data"]["schema_path"])
    digits["optimize"] = {"latency_runs": args.latency_runs}
    (home / "digits.yaml").write_text(yaml.safe_dump(digits))
    results = {"digits": run_pipeline(home / "digits.yaml", home, "digits", {})}
    console.print(f"digits done ({results['digits']['optimize_seconds']} s of optimize)")
    images = synthetic_images(home / "shapes.csv", args.images)
    config = home / "shapes.yaml"
    config.write_text(LARGE_YAML.format(source=images, runs=args.latency_runs))
    results["shapes"] = run_pipeline(config, home, "shapes", {})
    summary = {name: ratios(result) for name, result in results.items()}
    console.print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}")
    for name, result in results.items():
        print_table(console, f"{name}: {result['parameters']:,} parameters, optimize {result['optimize_seconds']} s",
                    result)
    checks = [
        ("int8 file >= 3.5x smaller than float32 (digits)", summary["digits"]["int8_size_ratio"], 3.5, True),
        ("int8 file >= 3.5x smaller than float32 (shapes)", summary["shapes"]["int8_size_ratio"], 3.5, True),
        ("80 % sparse + int8 gzip >= 10x smaller than float32 gzip (digits)",
         summary["digits"]["sparse_int8_gzip_ratio"], 10, True),
        ("80 % sparse + int8 gzip >= 10x smaller than float32 gzip (shapes)",
         summary["shapes"]["sparse_int8_gzip_ratio"], 10, True),
        ("selected variant within 1 point of float32 (digits)", summary["digits"]["selected_metric_loss_points"], 1.0,
         False),
        ("int8 batch-1 latency <= 0.7x float32 (shapes)", summary["shapes"]["int8_latency_ratio"], 0.7, False),
    ]
    for text, value, target, at_least in checks:
        met = value >= target if at_least else value <= target
        console.print(f"- {text}: {value:.2f} ({'met' if met else 'MISSED'})", highlight=False)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.platform(), "cores": os.cpu_count(), "results": results,
                                   "ratios": summary}, indent=1))
    console.print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
