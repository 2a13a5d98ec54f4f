"""Where each task runs: placement profiles (`infra/profiles/<name>.yaml`) under the pipeline's own
`placement`, and the stack's executors.

A step's placement is layered, later wins field by field: the profile's default, the pipeline's
default, the profile's entry for the step, the pipeline's entry for the step. The profile is the pipeline's
`placement.profile`, else the running stack's (`kiln up --profile`). A stack started with
`--no-cluster` has no KubernetesExecutor: `KILN_EXECUTOR_REMAP` (set by the stack for the
dag-processor) sends those steps to the LocalExecutor, without their pod override.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tasks.config import Executor, PipelineConfig, PlacementConfig, StepPlacement
from tasks.errors import BadInputError
from tasks.registry import STEP_NAMES
from tasks.registry import step as spec_of

PROFILES = Path(__file__).resolve().parents[1] / "profiles"
REMAP_VARIABLE = "KILN_EXECUTOR_REMAP"  # "KubernetesExecutor=LocalExecutor,..."
PROFILE_VARIABLE = "KILN_PLACEMENT_PROFILE"  # the running stack's profile: a pipeline that names none takes it


class PlacementError(BadInputError):
    """An unknown profile or executor, or one the running Airflow does not have; one line."""


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    executors: list[Executor] = Field(min_length=1, description="the executors a stack needs for this profile")
    default: StepPlacement = StepPlacement()
    steps: dict[str, StepPlacement] = {}


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def load_profile(name: str) -> Profile:
    path = PROFILES / f"{name}.yaml"
    if not path.is_file():
        raise PlacementError(f"placement profile {name!r} does not exist; profiles are {', '.join(profile_names())}")
    try:
        return Profile.model_validate(yaml.safe_load(path.read_text()))
    except Exception as exc:  # noqa: BLE001 - a broken shipped profile: say which, in one line
        raise PlacementError(f"{path}: {str(exc).splitlines()[0]}") from None


def _merged(*layers: StepPlacement | None) -> StepPlacement:
    fields: dict[str, Any] = {}
    for layer in layers:
        if layer is not None:
            fields.update(layer.model_dump(exclude_none=True))
    return StepPlacement.model_validate(fields)


def profile_of(placement: PlacementConfig) -> str | None:
    """The pipeline's own `placement.profile`, else the running stack's (KILN_PLACEMENT_PROFILE, which `kiln up` gives
    its services and `kiln run` takes from the stack it triggers on), else none: Airflow's defaults."""
    return placement.profile or os.environ.get(PROFILE_VARIABLE) or None


def step_placement(placement: PlacementConfig, step: str, remap: dict[str, str] | None = None,
                   like: str | None = None) -> StepPlacement:
    """The step's placement: the profile's and the YAML's defaults, then those of the step it is placed `like` (tune
    like train), then its own."""
    name = profile_of(placement)
    profile = load_profile(name) if name else None
    steps = [like, step] if like else [step]
    placed = _merged(profile.default if profile else None, placement.default,
                     *[layer for name in steps for layer in (profile.steps.get(name) if profile else None,
                                                              placement.steps.get(name))])
    target = (remap or {}).get(placed.executor or "")
    if target:
        placed = placed.model_copy(update={"executor": target, "pod_override": None})
    return placed


def batch_placement(config: PipelineConfig, remap: dict[str, str] | None = None) -> StepPlacement:
    """Where kiln_batch_<pipeline>'s scoring tasks run: evaluate's placement (they score as it does) under the batch
    section's own."""
    placed = _merged(step_placement(config.placement, "evaluate", remap),
                     config.batch.placement if config.batch else None)
    target = (remap or {}).get(placed.executor or "")
    return placed.model_copy(update={"executor": target, "pod_override": None}) if target else placed


def placements(placement: PlacementConfig, remap: dict[str, str] | None = None) -> dict[str, StepPlacement]:
    """Every step's placement, in run order."""
    return {step: step_placement(placement, step, remap, like=spec_of(step).placed_as) for step in STEP_NAMES}


def executor_remap(env: dict[str, str] | None = None) -> dict[str, str]:
    value = (os.environ if env is None else env).get(REMAP_VARIABLE, "")
    return dict(item.split("=", 1) for item in value.split(",") if "=" in item)


def placement_lines(config: PipelineConfig, remap: dict[str, str] | None = None) -> list[str]:
    """Where the pipeline's steps run, one line per place: `CeleryExecutor queue onprem: ingest, validate`."""
    grouped: dict[str, list[str]] = {}
    for step, placed in placements(config.placement, remap).items():
        where = " ".join(filter(None, [placed.executor or "the default executor",
                                       f"queue {placed.queue}" if placed.queue else "",
                                       f"pool {placed.pool}" if placed.pool else ""]))
        grouped.setdefault(where, []).append(step)
    return [f"{where}: {', '.join(steps)}" for where, steps in grouped.items()]


def executors_used(config: PipelineConfig, remap: dict[str, str] | None = None) -> set[str]:
    """The executors the pipeline's tasks need (unplaced tasks use the stack's default executor)."""
    return {p.executor for p in placements(config.placement, remap).values() if p.executor}


def check_executors(config: PipelineConfig, configured: list[str], remap: dict[str, str] | None = None) -> None:
    """Refuse, before anything runs, a pipeline that needs an executor the running Airflow lacks."""
    missing = sorted(executors_used(config, remap) - set(configured))
    if missing:
        steps = [s for s, p in placements(config.placement, remap).items() if p.executor in missing]
        raise PlacementError(f"pipeline {config.pipeline}: {', '.join(missing)} (for {', '.join(steps)}) is not "
                             f"configured in the running Airflow (executors: {', '.join(configured)}); start the "
                             f"stack with `kiln up --profile ...` or change placement")


def pod_override(override: Any) -> Any:
    """The kubernetes V1Pod the KubernetesExecutor merges into its worker pod ("base" container)."""
    from kubernetes.client import models as k8s

    limits = {k: v for k, v in {"cpu": override.cpu, "memory": override.memory}.items() if v}
    if override.gpus:
        limits["nvidia.com/gpu"] = str(override.gpus)
    container = k8s.V1Container(name="base", image=override.image,
                                resources=k8s.V1ResourceRequirements(limits=limits or None, requests=limits or None))
    tolerations = [k8s.V1Toleration(**t) for t in override.tolerations] or None
    return k8s.V1Pod(spec=k8s.V1PodSpec(containers=[container], node_selector=override.node_selector or None,
                                        tolerations=tolerations))
