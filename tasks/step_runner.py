"""The one generic runner: every step gets its config, context, MLflow child run and error mapping here.

`run_step("train", run_uri, try_number, {"examples": uri, ...})` reads the run snapshot, checks that
each input is a complete artifact of the kind the step's spec declares, calls the step inside its
MLflow child run (when the spec is tracked), checks the outputs against the spec, and returns their
URIs. Bad input (a `BadInputError`: data, config, model contract) becomes `StepRejected`, a one-line
error that no retry can fix; a gated step whose model is not blessed raises `StepSkipped`; anything
else propagates with its traceback, and may be retried.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from typing import Any

from tasks import tracking
from tasks.artifacts.base import KINDS, read_manifest
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.run import RunSnapshot
from tasks.errors import BadInputError, one_line
from tasks.registry import StepSpec, step
from tasks.snapshot import run_config

log = logging.getLogger(__name__)


class StepRejected(Exception):
    """The step's input is wrong (data, config or model contract): fail now, do not retry."""


class StepSkipped(Exception):
    """The step's gate is closed (e.g. push of a model that is not blessed): an outcome, not a failure."""


class StepContractError(RuntimeError):
    """A step's inputs or outputs do not match its spec (a kiln bug or a tampered artifact)."""


def run_step(name: str, run_uri: str, try_number: int = 1, inputs: dict[str, str] | None = None,
             **extra: Any) -> dict[str, str]:
    spec = step(name)
    inputs = dict(inputs or {})
    snapshot = RunSnapshot.read(run_uri)
    config = run_config(snapshot)
    ctx = snapshot.context(try_number)
    _check_inputs(spec, inputs)
    function = spec.load()
    started = time.monotonic()
    for gate in spec.gates:
        _check_gate(spec, config, inputs[gate])
    tracked = tracking.step_run(config, ctx, spec.name, parent_tags=ctx.lineage) if spec.tracked else nullcontext()
    try:
        with tracked:
            outputs = function(config, ctx, **inputs, **extra)
    except BadInputError as exc:
        message = one_line(exc)
        log.error("%s rejected its input: %s", spec.name, message)
        raise StepRejected(message) from None
    _check_outputs(spec, outputs)
    log.info("%s done in %.1fs: %s", spec.name, time.monotonic() - started, outputs)
    return outputs


def ask(name: str, run_uri: str, inputs: dict[str, str]) -> Any:
    """An approval step's question (subject, Markdown body, how long to wait for an answer); StepSkipped when
    the run promotes without asking anyone (serving.promotion: auto)."""
    spec = step(name)
    snapshot = RunSnapshot.read(run_uri)
    config = run_config(snapshot)
    _check_inputs(spec, inputs)
    asked = spec.load(spec.question)(config, snapshot.context(), **inputs)
    if asked is None:
        raise StepSkipped(f"promotion: {config.serving.promotion}; nobody is asked")
    return asked


def _check_gate(spec: StepSpec, config: Any, blessing_uri: str) -> None:
    """A gated step runs when its blessing input blesses; a model blessing may be forced with a reason."""
    kind = read_manifest(blessing_uri).kind
    blessing = KINDS[kind].read(blessing_uri).properties
    if blessing.blessed:
        return
    if kind == ModelEvaluation.KIND and config.serving.force_push_reason:
        log.warning("%s: the model is not blessed (%s); forced: %s", spec.name, blessing.first_failure,
                    config.serving.force_push_reason)
        return
    raise StepSkipped(f"not promoted: {blessing.first_failure}")


def _check_inputs(spec: StepSpec, inputs: dict[str, str]) -> None:
    if set(inputs) != set(spec.inputs):
        raise StepContractError(f"{spec.name} takes inputs {sorted(spec.inputs)}, got {sorted(inputs)}")
    for input_name, kind in spec.inputs.items():
        if inputs[input_name] is None and input_name in spec.optional_inputs:
            continue
        read_manifest(inputs[input_name], kind.KIND)


def _check_outputs(spec: StepSpec, outputs: dict[str, str]) -> None:
    if set(outputs) != set(spec.outputs):
        raise StepContractError(f"{spec.name} must return outputs {sorted(spec.outputs)}, returned {sorted(outputs)}")
    for output_name, kind in spec.outputs.items():
        read_manifest(outputs[output_name], kind.KIND)


def links(name: str, run_uri: str, outputs: dict[str, str]) -> dict[str, str]:
    """The step's URLs for people (its MLflow run, the model version, the served model); never raises."""
    from tasks.links import step_links

    try:
        snapshot = RunSnapshot.read(run_uri)
        return step_links(name, step(name).tracked, run_config(snapshot), snapshot.context(), outputs)
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
    from tasks.registry import STEPS

    outputs = {"run": run_uri, **(available or {})}
    for spec in STEPS:
        if spec.role != "step" or (names is not None and spec.name not in names):
            continue
        inputs = {name: outputs.get(name) if name in spec.optional_inputs else outputs[name] for name in spec.inputs}
        outputs.update(run_step(spec.name, run_uri, try_number, inputs))
    return outputs
