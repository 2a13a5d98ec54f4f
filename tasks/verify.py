"""Verify: replay eval rows against the pushed version over REST, compare with the in-process
model, then promote — `stable` moves to the new version on the server and `champion` to it in
MLflow (the old champion becomes `previous-champion`, the rollback target). A mismatch withdraws
the version from the server and fails the run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tasks.artifacts import StepContext, publish_artifact, read_artifact
from tasks.config import PipelineConfig
from tasks.ingest import load_split
from tasks.model import DIGIT, PROBABILITIES, predict
from tasks.train import SAVED_MODEL_DIR

log = logging.getLogger(__name__)

KIND = "ServingVerification"
CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous-champion", "challenger"


class VerificationError(RuntimeError):
    """The served model does not answer like the model that was evaluated."""


def run(config: PipelineConfig, ctx: StepContext, pushed: str, registered: str, model: str,
        examples: str) -> dict[str, str]:
    from serving.client import RestClient
    from serving.deployer import ServingDeployer, ServingTarget

    push_props = read_artifact(pushed, "PushedModel").properties
    registry = read_artifact(registered, "RegisteredModel").properties
    name, version = push_props["serving_model_name"], int(push_props["version"])
    pixels, _ = load_split(examples, "eval")
    pixels = pixels[: config.serving.verify_examples]

    expected = predict(Path(read_artifact(model, "Model").path(SAVED_MODEL_DIR)), pixels)
    target = ServingTarget.from_env()
    with RestClient(target.rest_url) as client:
        served = client.predict(name, pixels.tolist(), version=version)
    served_probabilities = np.array([row[PROBABILITIES] for row in served.outputs], dtype=np.float32)
    served_digits = np.array([row[DIGIT] for row in served.outputs])
    max_abs_diff = float(np.max(np.abs(served_probabilities - expected)))
    deployer = ServingDeployer(target)
    if max_abs_diff > config.serving.tolerance or not np.array_equal(served_digits, expected.argmax(axis=1)):
        deployer.withdraw(name, version)
        raise VerificationError(
            f"{name} version {version} answers differently from the evaluated model "
            f"(max |p diff| {max_abs_diff:.2e} > {config.serving.tolerance:g}); withdrawn from serving"
        )
    served_model = deployer.promote(name, version)
    aliases = promote_aliases(registry["model_name"], version)
    out_uri = ctx.output_uri("verify", "verification")
    properties = {
        "serving_model_name": name,
        "served_version": version,
        "versions": list(served_model.versions),
        "labels": served_model.labels,
        "examples": len(pixels),
        "max_abs_diff": max_abs_diff,
        "batch_latency_ms": round(served.latency_ms, 2),
        "mlflow_aliases": aliases,
    }
    with publish_artifact(out_uri, KIND, properties):
        pass
    log.info("verify: %s v%s matches in-process (max diff %.2e on %d rows); stable -> v%s; MLflow %s",
             name, version, max_abs_diff, len(pixels), version, aliases)
    return {"verification": out_uri}


def promote_aliases(model_name: str, version: int) -> dict[str, int]:
    """champion -> version; the old champion -> previous-champion; challenger is consumed."""
    from mlflow import MlflowClient

    client = MlflowClient()
    aliases = client.get_registered_model(model_name).aliases
    old = aliases.get(CHAMPION)
    if old is not None and int(old) != version:
        client.set_registered_model_alias(model_name, PREVIOUS, str(old))
    client.set_registered_model_alias(model_name, CHAMPION, str(version))
    if aliases.get(CHALLENGER) is not None and int(aliases[CHALLENGER]) == version:
        client.delete_registered_model_alias(model_name, CHALLENGER)
    final = client.get_registered_model(model_name).aliases
    return {alias: int(v) for alias, v in final.items()}
