"""The pipeline config: one strict, frozen model per pipeline, loaded from YAML.

Invalid configs fail at parse time with the field's dotted path in a one-line message, so
`kiln run` can refuse a bad file before anything is triggered.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import BadInputError


class ConfigError(BadInputError):
    """A config that cannot be used; the message is one line naming the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    source: str = Field(description="CSV file with a header row; ${VARS} are expanded")
    label_column: str = "label"
    eval_percent: int = Field(20, ge=1, le=99, description="share of rows hashed into the eval split")
    num_shards: int = Field(2, ge=1, le=64)
    schema_path: str | None = Field(
        None, description="curated schema (TFDV Schema text proto); inferred from the data when absent"
    )


class TrainConfig(_Strict):
    image_shape: tuple[int, int, int] = (8, 8, 1)
    num_classes: int = Field(10, ge=2)
    epochs: int = Field(12, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=65536, description="per-worker batch size")
    learning_rate: float = Field(0.002, gt=0, lt=1)
    num_workers: int = Field(1, ge=1, le=64)
    seed: int = 7
    worker_timeout_seconds: int = Field(900, ge=10, description="deadline for the whole worker group")


class EvaluateConfig(_Strict):
    min_accuracy: float = Field(0.95, ge=0, le=1, description="a model below this is not blessed")


class OptimizeConfig(_Strict):
    tflite: Literal["dynamic_range", "none"] = "dynamic_range"


class RegistryConfig(_Strict):
    model_name: str = Field("kiln-digits", min_length=1)
    experiment: str = Field("kiln", min_length=1)


class ServingConfig(_Strict):
    model_name: str = Field("digits", pattern=r"^[A-Za-z0-9_.-]+$")
    verify_examples: int = Field(32, ge=1, le=1000, description="eval rows replayed against the server")
    tolerance: float = Field(1e-4, gt=0, description="max |served - in-process| probability difference")


class StepPlacement(_Strict):
    executor: Literal["LocalExecutor", "CeleryExecutor", "KubernetesExecutor"] | None = None
    queue: str | None = None
    pool: str | None = None


class PlacementConfig(_Strict):
    default: StepPlacement = StepPlacement()
    steps: dict[str, StepPlacement] = {}


class PipelineConfig(_Strict):
    pipeline: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    data: DataConfig
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    registry: RegistryConfig = RegistryConfig()
    serving: ServingConfig = ServingConfig()
    placement: PlacementConfig = PlacementConfig()

    @model_validator(mode="after")
    def _known_placement_steps(self) -> PipelineConfig:
        unknown = set(self.placement.steps) - set(STEP_NAMES)
        if unknown:
            raise ValueError(f"placement.steps names unknown steps {sorted(unknown)}; steps are {list(STEP_NAMES)}")
        return self

    def with_overrides(self, overrides: dict[str, Any]) -> PipelineConfig:
        """Apply DAG params / `--param` values (`None` means "keep the YAML value")."""
        data = self.model_dump()
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in OVERRIDABLE:
                raise ConfigError(f"unknown parameter {key!r}; allowed: {', '.join(OVERRIDABLE)}")
            section, field = OVERRIDABLE[key].split(".")
            data[section][field] = value
        return _validate(data, source="parameters")


STEP_NAMES = ("ingest", "validate", "transform", "train", "evaluate", "optimize", "register", "push", "verify")

# The documented subset of fields a DAG run may override (DAG params and `kiln run --param`).
OVERRIDABLE: dict[str, str] = {
    "data_source": "data.source",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "learning_rate": "train.learning_rate",
    "num_workers": "train.num_workers",
    "min_accuracy": "evaluate.min_accuracy",
}


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"unknown field {where!r}"
    if err["type"] == "missing":
        return f"missing field {where!r}"
    return f"field {where!r}: {err['msg']}"


def _validate(data: Any, source: str) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_first_error(exc)}") from None


_UNSET_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        expanded = os.path.expandvars(value)
        unset = _UNSET_VAR.search(expanded)
        if unset:
            raise ConfigError(f"{value!r} uses environment variable {unset.group(1)}, which is not set")
        return expanded
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read YAML, expand ${VARS} in strings, validate strictly, then apply overrides."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    config = _validate(_expand(raw), source=str(path))
    return _resolve_paths(config, base=path.parent).with_overrides(overrides or {})


def _resolve_paths(config: PipelineConfig, base: Path) -> PipelineConfig:
    """Relative data paths are relative to the config file, not to whatever the cwd is."""

    def absolute(p: str | None) -> str | None:
        if p is None or "://" in p or os.path.isabs(p):
            return p
        return str((base / p).resolve())

    data = config.data.model_copy(
        update={"source": absolute(config.data.source), "schema_path": absolute(config.data.schema_path)}
    )
    return config.model_copy(update={"data": data})


def load_placement(path: str | os.PathLike[str]) -> PlacementConfig:
    """Only the `placement` section: DAG files read it at parse time, when the run's environment
    (e.g. ${KILN_HOME} in data paths) may not be set."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        return PlacementConfig.model_validate(raw.get("placement", {}))
    except ValidationError as exc:
        raise ConfigError(f"{path}: in section 'placement': {_first_error(exc)}") from None
