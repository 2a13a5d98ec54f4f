"""Train: launch N worker processes (MultiWorkerMirroredStrategy on loopback), publish the Model.

The launcher owns deadlines and cleanup: a missing or failed worker would leave the others
blocked in collectives, so the whole group is killed on the first failure or at the deadline,
and the failing worker's last log lines become the error. Backups and metrics live in a work
folder that survives a retry, so a retried task resumes at the last finished epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tasks
from infra.processes import free_ports, log_tail, stop_process_groups
from tasks import ingest, tracking
from tasks.artifacts import StepContext, publish_artifact, read_artifact
from tasks.config import PipelineConfig
from tasks.train_worker import PROGRESS_MARK
from tasks.transform import load_normalization

log = logging.getLogger(__name__)

KIND = "Model"
SAVED_MODEL_DIR = "saved_model"
METRICS_FILE = "metrics.jsonl"
ERROR_TAIL_LINES = 12
POLL_SECONDS = 0.2


class TrainError(RuntimeError):
    """Training failed or timed out; the first line says which worker and why."""


def run(config: PipelineConfig, ctx: StepContext, examples: str, transform: str) -> dict[str, str]:
    examples_props = read_artifact(examples, ingest.KIND).properties
    normalization = load_normalization(transform)
    if normalization["feature_columns"] != examples_props["feature_columns"]:
        raise TrainError(f"transform {transform} was computed for other columns than examples {examples}")
    out_uri = ctx.output_uri("train", "model")
    work_dir = _work_dir(ctx)
    fingerprint = examples_props["source_sha256"]
    with tracking.step_run(config, ctx, "train", data_fingerprint=fingerprint) as mlflow_run:
        import mlflow

        _log_params({f"train.{k}": v for k, v in config.train.model_dump().items()})
        properties: dict[str, Any] = {"num_workers": config.train.num_workers, "epochs": config.train.epochs,
                                      "data_fingerprint": fingerprint, "mlflow_run_id": mlflow_run.info.run_id}
        with publish_artifact(out_uri, KIND, properties) as staging:
            spec = {
                "train_files": ingest.split_files(examples, "train"),
                "eval_files": ingest.split_files(examples, "eval"),
                "feature_columns": examples_props["feature_columns"],
                "label_column": examples_props["label_column"],
                "num_train": examples_props["row_counts"]["train"],
                "num_eval": examples_props["row_counts"]["eval"],
                "train": config.train.model_dump(mode="json"),
                "mean": normalization["mean"],
                "variance": normalization["variance"],
                "saved_model_dir": str(staging / SAVED_MODEL_DIR),
                "metrics_path": str(work_dir / METRICS_FILE),
                "backup_dir": str(work_dir / "backup"),
                "scratch_dir": str(work_dir / "scratch"),
            }
            started = time.monotonic()
            run_workers(spec, config.train.num_workers, config.train.worker_timeout_seconds, work_dir)
            train_seconds = round(time.monotonic() - started, 2)
            history = read_metrics(work_dir / METRICS_FILE)
            (staging / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in history))
            final = {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}
            properties.update(train_seconds=train_seconds, final_metrics=final)
            for record in history:
                mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
            mlflow.log_metric("train_seconds", train_seconds)
    shutil.rmtree(work_dir, ignore_errors=True)
    log.info("train: %d epochs on %d worker(s) in %.1fs, final %s -> %s", config.train.epochs,
             config.train.num_workers, train_seconds, _brief(final), out_uri)
    return {"model": out_uri}


def _log_params(params: dict[str, Any]) -> None:
    """MLflow params are write-once: a retry whose config changed keeps the first try's values."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.log_params(params)
    except MlflowException as exc:
        log.warning("train: MLflow kept the params of an earlier try: %s", str(exc).splitlines()[0][:300])


def run_workers(spec: dict[str, Any], num_workers: int, timeout_seconds: float, work_dir: Path) -> None:
    """Start `num_workers` `tasks.train_worker` processes and wait for all; raise TrainError otherwise."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec_path = work_dir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(num_workers)]}
    logs = [work_dir / f"worker-{i}.log" for i in range(num_workers)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for index in range(num_workers):
            env = _worker_env({"cluster": cluster, "task": {"type": "worker", "index": index}})
            with logs[index].open("wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "tasks.train_worker", "--spec", str(spec_path)],
                    env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                ))
        _wait(procs, logs, timeout_seconds)
    finally:
        stop_process_groups([p.pid for p in procs if p.poll() is None], timeout=5)


def _worker_env(tf_config: dict[str, Any]) -> dict[str, str]:
    env = dict(os.environ)  # CUDA_VISIBLE_DEVICES and the like pass through untouched
    env["TF_CONFIG"] = json.dumps(tf_config)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    package_root = str(Path(tasks.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


def _wait(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    relayed = 0
    while True:
        relayed = _relay_progress(logs[0], relayed)
        codes = [p.poll() for p in procs]
        for index, code in enumerate(codes):
            if code not in (None, 0):
                raise TrainError(f"train worker {index} of {len(procs)} failed with exit code {code}: "
                                 f"{log_tail(logs[index], 1)[0]}\n{_tail(logs[index])}")
        if all(code == 0 for code in codes):
            _relay_progress(logs[0], relayed)
            return
        if time.monotonic() > deadline:
            running = [i for i, c in enumerate(codes) if c is None]
            raise TrainError(f"train workers {running} still running after the {timeout_seconds}s deadline "
                             f"(worker_timeout_seconds); all stopped\n{_tail(logs[running[0]])}")
        time.sleep(POLL_SECONDS)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Per-epoch records; a resumed run may repeat an epoch, the last record of an epoch wins."""
    if not path.exists():
        return []
    by_epoch = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def _work_dir(ctx: StepContext) -> Path:
    """Per-run scratch that outlives a failed try: beside the artifacts when local, else in /tmp."""
    uri = ctx.output_uri("train", ".work")
    if "://" not in uri or uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return Path(tempfile.gettempdir()) / "kiln-train" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _relay_progress(log_path: Path, offset: int) -> int:
    """Copy the chief's progress lines into this task's log (what Airflow shows)."""
    try:
        with log_path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return offset
    complete = chunk[: chunk.rfind(b"\n") + 1]
    for line in complete.decode(errors="replace").splitlines():
        if PROGRESS_MARK in line:
            log.info("%s", line.split(PROGRESS_MARK, 1)[1].strip())
    return offset + len(complete)


def _tail(path: Path) -> str:
    return "\n".join(f"  | {line}" for line in log_tail(path, ERROR_TAIL_LINES))


def _brief(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float))
