"""What each step is given of the pipeline's config: only the sections its spec declares (TFX's exec_properties),
as one small frozen model per kind of step. The step runner builds it from the run's resolved config; a step reads
nothing else of it, so a step's config dependencies (what a cache key must cover) are exactly these sections. The
pipeline's identity (names, task type, description, MLflow experiment) is in the step's context.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict

from tasks.config import (
    CacheConfig,
    DataConfig,
    EvaluateConfig,
    MonitorConfig,
    OptimizeConfig,
    PipelineConfig,
    RegistryConfig,
    ServingConfig,
    TaskConfig,
    TrainConfig,
    TransformConfig,
    TuneConfig,
    optimize_budget,
)


class StepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def sections(cls) -> tuple[str, ...]:
        return tuple(cls.model_fields)

    @classmethod
    def of(cls, config: PipelineConfig) -> Self:
        return cls(**{section: getattr(config, section) for section in cls.sections()})


class NoConfig(StepConfig):
    """A step that reads no config section."""


class CacheSections(StepConfig):
    """What resolve records for the run's steps: which of them may reuse earlier outputs (tasks.cache)."""

    cache: CacheConfig


class DataSections(StepConfig):
    data: DataConfig


class TransformSections(StepConfig):
    transform: TransformConfig
    task: TaskConfig
    data: DataConfig  # data.engine: where the analyzers' pass runs


class TrainSections(StepConfig):
    train: TrainConfig
    data: DataConfig  # data.memory_budget: what the workers may cache
    tune: TuneConfig | None  # the study whose best trial's values train takes


class TuneSections(StepConfig):
    tune: TuneConfig | None
    train: TrainConfig


class OptimizeSections(StepConfig):
    optimize: OptimizeConfig
    train: TrainConfig  # the fine-tunes run in train's launcher
    data: DataConfig  # data.memory_budget: what the workers may cache
    serving: ServingConfig  # serving.format decides what the version folder holds
    task: TaskConfig

    @property
    def budget(self) -> float:
        return optimize_budget(self.task, self.optimize)


class EvaluateSections(StepConfig):
    evaluate: EvaluateConfig


class RegistrySections(StepConfig):
    registry: RegistryConfig


class ServingSections(StepConfig):
    serving: ServingConfig


class MonitorSections(StepConfig):
    data: DataConfig
    monitor: MonitorConfig
