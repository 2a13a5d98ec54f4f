"""Verify: the server's version folder must be the one evaluate blessed (its digest, recomputed from the model
base path), and eval rows replayed against the pushed version over REST — JSON objects by feature name, as a
client sends them — must get the answers of that folder run in-process (`tasks.served_artifact`: TFLite in
LiteRT or the SavedModel, as the server runs it).

A mismatch withdraws the canary (`challenger` is dropped with the reason in the alias history, then a sync
unloads it; stable untouched) and fails the run. A verified canary stays `challenger` for promote (after an
approval, when the run asks for one).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from common import storage
from common.digest import folder_digest
from serving.client import RestClient
from tasks.artifacts.base import Output
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import Model
from tasks.artifacts.pushed import PushedModel
from tasks.artifacts.verification import VerificationProperties
from tasks.context import StepContext
from tasks.features import json_instances, load_arrays
from tasks.models.export import CLASS, CLASS_ID
from tasks.served_artifact import predict_served
from tasks.serving_sync import RegistryServing
from tasks.step_config import ServingSections

log = logging.getLogger(__name__)


class VerificationError(RuntimeError):
    """The served version is not the blessed folder, or does not answer like it."""


def run(ctx: StepContext, config: ServingSections, *, pushed: PushedModel, evaluation: ModelEvaluation,
        model: Model, examples: Examples, verification: Output[VerificationProperties]) -> None:
    pushed_props = pushed.properties
    blessed_sha256 = evaluation.properties.artifact_sha256
    name, version = pushed_props.serving_model_name, pushed_props.version
    inputs, _ = load_arrays(examples.split_files("eval"), model.preprocessing.features, model.preprocessing.label,
                            limit=config.serving.verify_examples)
    serving = RegistryServing.of_run(ctx)

    def withdrawn(why: str) -> VerificationError:
        serving.withdraw(version, f"v{version} failed verify: {why}")
        return VerificationError(f"{name} version {version} {why}; withdrawn from serving")

    served_folder = storage.localize(serving.deployer.version_dir(name, version))  # what the server loaded
    served_sha256 = folder_digest(served_folder)
    if served_sha256 != blessed_sha256:
        raise withdrawn(f"is not the blessed artifact: its folder on the server has digest {served_sha256[:12]}, "
                        f"evaluate blessed {blessed_sha256[:12]}")
    expected = predict_served(served_folder, inputs)
    with RestClient(serving.deployer.target.rest_url) as rest:
        served = rest.predict(name, json_instances(inputs), version=version)
    max_diff, mismatch = compare(served.rows(list(expected)), expected)
    if mismatch or max_diff > config.serving.tolerance:
        why = mismatch or f"max relative output difference {max_diff:.2e} > serving.tolerance {config.serving.tolerance:g}"
        raise withdrawn(f"answers differently from the shipped model ({why})")
    verification.properties = VerificationProperties(
        serving_model_name=name, served_version=version, versions=list(pushed_props.versions),
        labels=pushed_props.labels, examples=len(served.outputs), max_relative_diff=max_diff,
        batch_latency_ms=round(served.latency_ms, 2), artifact_sha256=served_sha256)
    log.info("verify: %s v%s is the blessed folder (sha256 %s) and matches it in-process (max relative diff %.2e "
             "on %d rows)", name, version, served_sha256, max_diff, len(served.outputs))


def compare(served: list[dict[str, Any]], expected: dict[str, Any]) -> tuple[float, str | None]:
    """(max relative difference of the numeric outputs, the first exact mismatch or None)."""
    max_diff = 0.0
    for key, values in expected.items():
        got = [row[key] for row in served]
        if key in (CLASS, CLASS_ID):
            want = [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]
            if got != want:
                first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
                return max_diff, f"row {first}: {key} {got[first]!r} != {want[first]!r}"
            continue
        got_array = np.asarray(got, dtype=np.float64)
        want_array = np.asarray(values, dtype=np.float64)
        scale = np.maximum(1.0, np.abs(want_array))
        max_diff = max(max_diff, float(np.max(np.abs(got_array - want_array) / scale)) if got_array.size else 0.0)
    return max_diff, None

