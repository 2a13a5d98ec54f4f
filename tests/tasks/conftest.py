"""Fixtures for the pipeline steps: demo CSVs, a temp MLflow store, one tiny trained model."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"

from tasks.artifacts import StepContext  # noqa: E402
from tasks.config import PipelineConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CURATED_SCHEMA = REPO / "pipelines" / "digits.schema.pbtxt"


def build_config(source: str | Path, **sections: dict[str, Any]) -> PipelineConfig:
    """A small, fast config; `sections` override whole-section fields, e.g. train={"epochs": 1}."""
    data = {"source": str(source), "schema_path": str(CURATED_SCHEMA), **sections.pop("data", {})}
    train = {"epochs": 2, "batch_size": 32, "worker_timeout_seconds": 180, **sections.pop("train", {})}
    return PipelineConfig(pipeline="digits", data=data, train=train, **sections)


@pytest.fixture
def make_config() -> Callable[..., PipelineConfig]:
    return build_config


@pytest.fixture
def ctx(tmp_path: Path) -> StepContext:
    return StepContext(artifact_root=str(tmp_path / "artifacts"), pipeline="digits", run_id="manual__test-run")


@pytest.fixture(scope="session")
def digits_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from infra.demo_data import write_digits_csv

    return write_digits_csv(tmp_path_factory.mktemp("demo") / "digits.csv")


@contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """$MLFLOW_TRACKING_URI set for a block only (session fixtures cannot use monkeypatch)."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A temp SQLite MLflow store whose `kiln` experiment keeps its artifacts in tmp too."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("kiln", artifact_location=str(root / "artifacts"))
    return uri


@pytest.fixture
def mlflow_env(mlflow_store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """$MLFLOW_TRACKING_URI -> the temp store for one test; other tests never see it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)


@pytest.fixture(scope="session")
def trained(tiny_digits_csv: Path, mlflow_store: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """ingest -> validate -> transform -> train (1 worker, 3 epochs) on 400 rows, shared by later steps."""
    from tasks import ingest, train, transform, validate

    config = build_config(tiny_digits_csv, train={"epochs": 3})
    session_ctx = StepContext(str(tmp_path_factory.mktemp("trained")), "digits", "session-run")
    examples = ingest.run(config, session_ctx)["examples"]
    schema = validate.run(config, session_ctx, examples=examples)["schema"]
    transform_uri = transform.run(config, session_ctx, examples=examples, schema=schema)["transform"]
    with tracking_uri(mlflow_store):
        model = train.run(config, session_ctx, examples=examples, transform=transform_uri)["model"]
    return {"config": config, "examples": examples, "schema": schema, "transform": transform_uri, "model": model}
