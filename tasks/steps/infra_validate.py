"""InfraValidate: TFX's InfraValidator — before the candidate touches the real server, load it in a sandbox
model server on free loopback ports (only the candidate), wait for AVAILABLE within a deadline (its
warmup requests replay there too), send eval rows one by one over REST and gRPC, and time them.

Infra-blessed when it loaded in time, every request was answered, and its p99 (REST and gRPC) is within
`serving.max_p99_ms`. A candidate that fails any of that is not infra-blessed, with the reason; push is
gated on this blessing. The sandbox is `serving.sandbox_binary` (kiln-model-server by default; the real
`tensorflow_model_server` takes the same flags), or a running TF Serving kept for validation
(`serving.sandbox`: a staging instance), where the candidate is loaded under its own name and unloaded
afterwards. Either way it loads optimize's version folder, the one evaluate blessed: the bytes push ships (the
sandbox runs with --prefer_tflite_model, as every kiln server does, so a TFLite folder is served as TFLite).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from serving.client import GrpcPredictor, RestClient, ServingClientError
from serving.deployer import DeployError, ServingDeployer
from serving.sandbox import SandboxError, sandbox_server
from serving.target import ServingTarget
from tasks.artifacts.base import Output
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.examples import Examples
from tasks.artifacts.infra_blessing import InfraBlessingProperties
from tasks.artifacts.model import Model
from tasks.artifacts.optimized import VERSION_FOLDER, OptimizedModel
from tasks.artifacts.registered import RegisteredModel
from tasks.context import StepContext
from tasks.features import json_instances, load_arrays
from tasks.step_config import ServingSections

log = logging.getLogger(__name__)

SANDBOX_MODEL_SUFFIX = "-infra-validation"  # the candidate's name on a configured, shared sandbox server


def run(ctx: StepContext, config: ServingSections, *, evaluation: ModelEvaluation, registered: RegisteredModel,
        optimized: OptimizedModel, model: Model, examples: Examples,
        infra_blessing: Output[InfraBlessingProperties]) -> None:
    del evaluation  # a gate: read by the step runner
    settings = config.serving
    # The sandbox reads a local copy (the artifact may be on object storage).
    candidate = (optimized.local(VERSION_FOLDER), registered.properties.version)
    inputs, _ = load_arrays(examples.split_files("eval"), model.preprocessing.features, model.preprocessing.label,
                            limit=settings.infra_examples)
    timeout = settings.infra_load_timeout_seconds
    if settings.sandbox is not None:
        measured: dict[str, Any] = {"server": settings.sandbox.rest_url, "max_p99_ms": settings.max_p99_ms}
        measured |= _on_shared_sandbox(settings.sandbox.target(), ctx.served_model_name + SANDBOX_MODEL_SUFFIX,
                                       candidate, inputs, timeout)
    else:
        measured = {"server": settings.sandbox_binary, "max_p99_ms": settings.max_p99_ms}
        try:
            with sandbox_server(settings.sandbox_binary) as target:
                measured |= _load_and_probe(target, ctx.served_model_name, candidate, inputs, timeout)
        except SandboxError as exc:
            measured |= {"blessed": False, "reason": f"the sandbox server did not start: {exc}"}
    if measured.get("blessed") is None:
        measured |= _verdict(measured, settings.max_p99_ms)
    infra_blessing.properties = InfraBlessingProperties(**measured)
    log.info("infra_validate: %s: %s", "infra-blessed" if measured["blessed"] else "NOT infra-blessed",
             infra_blessing.properties.model_dump_json(exclude_none=True))


def _on_shared_sandbox(target: ServingTarget, name: str, candidate: tuple[Path, int], inputs: dict[str, Any],
                       load_timeout: float) -> dict[str, Any]:
    """On a running server kept for validation: load, probe, then unload the candidate (and its folder)."""
    try:
        return _load_and_probe(target, name, candidate, inputs, load_timeout)
    finally:
        ServingDeployer(target, load_timeout=load_timeout).reconcile(name, stable=None)


def _load_and_probe(target: ServingTarget, name: str, candidate: tuple[Path, int], inputs: dict[str, Any],
                    load_timeout: float) -> dict[str, Any]:
    folder, version = candidate
    deployer = ServingDeployer(target, load_timeout=load_timeout)
    deployer.stage_version(name, version, folder, {})
    started = time.monotonic()
    try:
        deployer.push_version(name, version)
    except DeployError as exc:
        cause = exc.__cause__ or exc
        return {"blessed": False, "reason": f"the candidate did not load in the sandbox: {str(cause).splitlines()[0]}",
                "load_seconds": round(time.monotonic() - started, 3)}
    load_seconds = round(time.monotonic() - started, 3)
    rows = json_instances(inputs)
    rest, grpc, errors, first_error = [], [], 0, None
    with RestClient(target.rest_url, timeout=60) as client, GrpcPredictor(target.grpc_address, timeout=60) as predictor:
        for index, row in enumerate(rows):
            try:
                rest.append(client.predict(name, [row], version=version).latency_ms)
                one = {key: values[index:index + 1] for key, values in inputs.items()}
                grpc.append(predictor.predict(name, one, version=version)[1])
            except ServingClientError as exc:
                errors += 1
                first_error = first_error or str(exc)
    result: dict[str, Any] = {"load_seconds": load_seconds, "requests": 2 * len(rows), "errors": errors}
    for protocol, latencies in (("rest", rest), ("grpc", grpc)):
        if latencies:
            result[f"{protocol}_p50_ms"] = round(float(np.percentile(latencies, 50)), 3)
            result[f"{protocol}_p99_ms"] = round(float(np.percentile(latencies, 99)), 3)
    if errors:
        result |= {"blessed": False, "reason": f"{errors} of {2 * len(rows)} requests failed in the sandbox, "
                                               f"first: {first_error}"}
    return result


def _verdict(measured: dict[str, Any], max_p99_ms: float | None) -> dict[str, Any]:
    worst = max(measured.get("rest_p99_ms") or 0.0, measured.get("grpc_p99_ms") or 0.0)
    if max_p99_ms is not None and worst > max_p99_ms:
        return {"blessed": False, "reason": f"p99 latency {worst:.1f} ms in the sandbox exceeds "
                                            f"serving.max_p99_ms {max_p99_ms:g}"}
    return {"blessed": True, "reason": f"loaded in {measured['load_seconds']:.2f}s; {measured['requests']} requests "
                                       f"answered, p99 {worst:.1f} ms"}
