"""The one generic runner: it executes a step's contract (TFX's `Executor.Do(input_dict, output_dict,
exec_properties)`).

`run_step("train", run_uri, try_number, {"examples": uri, ...})` reads the run snapshot, reads each input as
the artifact kind the step's spec declares, allocates every output the spec declares (a URI under the step's
folder and a staging folder to fill: `Output`), and calls the step with its context, the config sections it
declares and nothing else, its typed inputs and its output handles, inside its MLflow child run when the spec
is tracked. When the step returns, every output is published whole (and checked against the spec); when it
fails, nothing is. It returns the outputs' URIs, which the DAG passes on. A step returns nothing: it never names
itself or its outputs. Bad input (a `BadInputError`: data, config, model contract) becomes `StepRejected`, a
one-line error that no retry can fix; a gated step whose model is not blessed raises `StepSkipped`; anything
else propagates with its traceback, and may be retried.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any

from tasks import cache, tracking
from tasks.artifacts.base import ArtifactError, ArtifactType, Output, read_manifest
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.examples import Examples
from tasks.artifacts.run import RunSnapshot
from tasks.config import PipelineConfig, load_config
from tasks.context import StepContext
from tasks.errors import BadInputError, StepSkipped, one_line
from tasks.registry import STEPS, StepSpec, step
from tasks.snapshot import Deployment, pipeline_context, run_config, run_context, serving_endpoints, with_span

__all__ = ["StepContractError", "StepRejected", "StepSkipped", "ask", "links", "pipeline_links", "recorded_outputs", "run_on_pipeline", "run_step",
           "run_steps"]

log = logging.getLogger(__name__)
CACHED_FROM_TAG = "kiln.cached_from"


class StepRejected(Exception):
    """The step's input is wrong (data, config or model contract): fail now, do not retry."""


class StepContractError(RuntimeError):
    """A step's inputs or outputs do not match its spec (a kiln bug or a tampered artifact)."""


def run_step(name: str, run_uri: str, try_number: int = 1, inputs: dict[str, str | None] | None = None,
             **extra: Any) -> dict[str, Any]:
    """Run one step of the run at `run_uri` on `inputs` (input name -> URI); its outputs' URIs (and what the step
    returned). `extra`: what the DAG hands an approval (the person's answer) or the teardown (the run's outputs)."""
    spec = step(name)
    snapshot = RunSnapshot.read(run_uri)
    return _execute(spec, run_context(snapshot, try_number, spec.name), run_config(snapshot), dict(inputs or {}),
                    extra)


def run_on_pipeline(name: str, config_path: str, deployment: Deployment, run_id: str,
                    try_number: int = 1) -> dict[str, Any]:
    """Run a service step of a pipeline (its drift monitor, its serving sync) on its config as it is now (the
    newest span), with the deployment's services and no run snapshot: it reads no artifact of a run."""
    spec = step(name)
    try:
        config = with_span(load_config(config_path))
        ctx = _pipeline_ctx(spec, config, deployment, run_id, try_number)
    except BadInputError as exc:
        raise StepRejected(one_line(exc)) from None
    return _execute(spec, ctx, config, {}, {})


def _pipeline_ctx(spec: StepSpec, config: PipelineConfig, deployment: Deployment, run_id: str,
                  try_number: int = 1) -> StepContext:
    return pipeline_context(config, deployment.artifact_root, run_id, deployment.tracking_uri_for(config),
                            serving_endpoints(config, deployment), try_number, step=spec.name)


def _execute(spec: StepSpec, ctx: StepContext, config: PipelineConfig, inputs: dict[str, str | None],
             extra: dict[str, Any]) -> dict[str, Any]:
    artifacts = _read_inputs(spec, inputs)
    for gate in spec.gates:
        _check_gate(spec, config, artifacts[gate])
    started = time.monotonic()
    try:
        decision = cache.decide(ctx, config, spec, artifacts) if cache.cacheable(spec.name) else None
    except BadInputError as exc:  # e.g. ingest's data, which the key reads, is not there
        raise _rejected(spec, exc) from None
    if decision is not None and decision.hit:
        return _reuse(spec, ctx, decision, started)
    function = spec.load()
    outputs = {output: Output(kind, ctx.output_uri(output)) for output, kind in spec.outputs.items()}
    tracked = tracking.step_run(ctx, parent_tags=ctx.lineage) if spec.tracked else nullcontext()
    try:
        with tracked:
            returned = function(ctx, spec.config.of(config), **artifacts, **outputs, **extra)
            for output in outputs.values():
                output.publish()
    except BadInputError as exc:
        raise _rejected(spec, exc) from None
    finally:
        for output in outputs.values():
            output.discard()
    result: dict[str, Any] = {output: handle.uri for output, handle in outputs.items()}
    log.info("%s done in %.1fs: %s", spec.name, time.monotonic() - started, result)
    if decision is not None:
        cache.record(ctx, spec.name, decision, result)
        log.info("%s ran: %s (cache key %s)", spec.name, decision.reason, decision.key[:16])
        result[cache.RESULT_KEY] = decision.summary()
    return {**(returned or {}), **result}


def _rejected(spec: StepSpec, exc: BadInputError) -> StepRejected:
    message = one_line(exc)
    log.error("%s rejected its input: %s", spec.name, message)
    return StepRejected(message)


def _reuse(spec: StepSpec, ctx: StepContext, decision: cache.Decision, started: float) -> dict[str, Any]:
    """A cache hit: the earlier outputs as they are (nothing copied), the step's MLflow run tagged with the run that
    made them."""
    if spec.tracked:
        import mlflow

        with tracking.step_run(ctx, parent_tags=ctx.lineage):
            mlflow.set_tags({CACHED_FROM_TAG: decision.from_run or "", "kiln.cache_key": decision.key})
        for name, kind in spec.outputs.items():  # the run's data, as the step that made the examples tags it
            if kind is Examples:
                data = Examples.read(decision.outputs[name]).properties
                tracking.tag_data(ctx, data.source, data.source_sha256, data.span)
    log.info("%s: %s in %.2fs, cache key %s: %s", spec.name, decision.reason, time.monotonic() - started,
             decision.key[:16], decision.outputs)
    return {**decision.outputs, cache.RESULT_KEY: decision.summary()}


def ask(name: str, run_uri: str, inputs: dict[str, str | None]) -> Any:
    """An approval step's question (subject, Markdown body, how long to wait for an answer); StepSkipped when
    the run promotes without asking anyone (serving.promotion: auto)."""
    spec = step(name)
    snapshot = RunSnapshot.read(run_uri)
    config = run_config(snapshot)
    asked = spec.load(spec.question)(run_context(snapshot, step=spec.name), spec.config.of(config),
                                     **_read_inputs(spec, inputs))
    if asked is None:
        raise StepSkipped(f"promotion: {config.serving.promotion}; nobody is asked")
    return asked


def recorded_outputs(name: str, run_uri: str) -> dict[str, str] | None:
    """The step's outputs in this run when an earlier try published all of them, else None. An approval retried
    after its answer was recorded (Airflow may retry a task whose resumed try it lost track of) must not ask again."""
    spec = step(name)
    ctx = run_context(RunSnapshot.read(run_uri), step=spec.name)
    uris = {output: ctx.output_uri(output) for output in spec.outputs}
    for output, uri in uris.items():
        try:
            read_manifest(uri, spec.outputs[output].KIND)
        except ArtifactError:
            return None
    return uris


def _check_gate(spec: StepSpec, config: PipelineConfig, blessing: ArtifactType[Any]) -> None:
    """A gated step runs when its blessing input blesses; a model blessing may be forced with a reason."""
    if blessing.properties.blessed:
        return
    if isinstance(blessing, ModelEvaluation) and config.serving.force_push_reason:
        log.warning("%s: the model is not blessed (%s); forced: %s", spec.name, blessing.properties.first_failure,
                    config.serving.force_push_reason)
        return
    raise StepSkipped(f"not promoted: {blessing.properties.first_failure}")


def _read_inputs(spec: StepSpec, inputs: dict[str, str | None]) -> dict[str, ArtifactType[Any] | None]:
    """Each input read as the kind the spec declares (an optional input may be None)."""
    if set(inputs) != set(spec.inputs):
        raise StepContractError(f"{spec.name} takes inputs {sorted(spec.inputs)}, got {sorted(inputs)}")
    read: dict[str, ArtifactType[Any] | None] = {}
    for input_name, kind in spec.inputs.items():
        uri = inputs[input_name]
        if uri is None and input_name in spec.optional_inputs:
            read[input_name] = None
            continue
        read[input_name] = kind.read(uri)
    return read


def links(name: str, run_uri: str, outputs: dict[str, str]) -> dict[str, str]:
    """The step's URLs for people (its MLflow run, the model version, the served model); never raises."""
    from tasks.links import step_links

    try:
        snapshot = RunSnapshot.read(run_uri)
        return step_links(step(name).tracked, run_context(snapshot, step=name), outputs)
    except Exception as exc:  # noqa: BLE001 - a link is a convenience: it must not fail the step
        log.warning("no links for %s: %s", name, exc)
        return {}


def pipeline_links(name: str, config_path: str, deployment: Deployment, run_id: str,
                   outputs: dict[str, Any]) -> dict[str, str]:
    """A service step's links (`links` for a step run on a pipeline's config); never raises."""
    from tasks.links import step_links

    try:
        spec = step(name)
        ctx = _pipeline_ctx(spec, with_span(load_config(config_path)), deployment, run_id)
        return step_links(spec.tracked, ctx, outputs)
    except Exception as exc:  # noqa: BLE001 - a link is a convenience: it must not fail the step
        log.warning("no links for %s: %s", name, exc)
        return {}


def run_steps(run_uri: str, names: list[str] | None = None, available: dict[str, str] | None = None,
              try_number: int = 1) -> dict[str, str]:
    """Run pipeline steps in registry order in this process (tests, benchmarks: TFX's local runner).

    `available` holds outputs of earlier steps (name -> URI); returns them plus every new output. An approval
    is a person's answer: nobody is here to give it, so the steps after it get none (promote then refuses to
    promote a run that asks for one).
    """
    outputs = {"run": run_uri, **(available or {})}
    for spec in STEPS:
        if spec.role != "step" or (names is not None and spec.name not in names):
            continue
        inputs = {name: outputs.get(name) if name in spec.optional_inputs else outputs[name] for name in spec.inputs}
        if spec.fan_out is None:
            outputs.update(run_step(spec.name, run_uri, try_number, inputs))
            continue
        for instance in range(spec.instances(run_config(RunSnapshot.read(run_uri)))):  # one after the other here
            run_step(spec.name, run_uri, try_number, inputs, instance=instance)
    return outputs
