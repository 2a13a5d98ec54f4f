"""The step registry: every step of a kiln pipeline, declared once, in run order.

A spec names the step, the function that does its one job, the artifact types it reads and writes
(inputs are matched to the outputs of earlier steps by name, like TFX channels), the config section
it reads and the DAG params it exposes (each a config field; the param's JSON schema — type, bounds,
description — is derived from the pydantic field, never restated; the trigger form is prefilled with
the pipeline YAML's values, and a value left as it is stays no override). The DAG factory, the CLI's step
list, placement validation and the DAG-integrity test are all generated from `STEPS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from tasks.artifacts.anomalies import ExampleAnomalies
from tasks.artifacts.approval import ApprovalDecision
from tasks.artifacts.base import ArtifactType
from tasks.artifacts.drift import DriftReport
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.examples import Examples
from tasks.artifacts.infra_blessing import InfraBlessing
from tasks.artifacts.model import Model
from tasks.artifacts.optimized import OptimizedModel
from tasks.artifacts.promotion import Promotion
from tasks.artifacts.pushed import PushedModel
from tasks.artifacts.registered import RegisteredModel
from tasks.artifacts.run import RunSnapshot
from tasks.artifacts.schema import Schema
from tasks.artifacts.statistics import ExampleStatistics
from tasks.artifacts.transform import TransformGraph
from tasks.artifacts.verification import ServingVerification
from tasks.config import ConfigError, PipelineConfig, StepName
from tasks.step_config import (
    CacheSections,
    DataSections,
    EvaluateSections,
    MonitorSections,
    NoConfig,
    OptimizeSections,
    RegistrySections,
    ServingSections,
    StepConfig,
    TrainSections,
    TransformSections,
    TuneSections,
)

# setup: resolves the run; step: a function of its inputs; approval: a person's answer, which the DAG waits for
# (its `question` runs before the wait, its executor records the answer); teardown: runs whatever happened upstream;
# service: a step of a pipeline's service DAGs (drift monitor, serving sync), run on the pipeline's config as it is
# at the time, with no run snapshot and no inputs.
Role = Literal["setup", "step", "approval", "teardown", "service"]


@dataclass(frozen=True)
class StepSpec:
    name: str
    executor: str  # "module:function", imported when the step runs (DAG parsing stays light)
    description: str
    inputs: dict[str, type[ArtifactType[Any]]] = field(default_factory=dict)
    outputs: dict[str, type[ArtifactType[Any]]] = field(default_factory=dict)
    # The config sections the step reads, as one model (its params are fields of them): all the step is given.
    config: type[StepConfig] = NoConfig
    params: dict[str, str] = field(default_factory=dict)  # DAG param -> dotted config field
    tracked: bool = False  # runs inside its own MLflow child run
    timeout: str | None = None  # the dotted config field holding the task's execution timeout, in minutes
    role: Role = "step"
    # Inputs that bless (a ModelEvaluation, an InfraBlessing): the step runs only when all of them do. A
    # forced push (serving.force_push_reason) overrides the model's blessing, never the infra blessing.
    gates: tuple[str, ...] = ()
    # Inputs whose step may rightly not run (promote's approval when promotion is auto): the step then gets None.
    # It still does not run when every step it reads from was skipped (promote after a push that was not blessed).
    optional_inputs: tuple[str, ...] = ()
    question: str | None = None  # an approval's "module:function": what a person is asked, or None: nobody
    placed_as: str | None = None  # a service step placed like this pipeline step (it writes what that step writes)
    # A step run as several task instances (Airflow dynamic task mapping): the dotted config field with their number
    # (absent or None: no instance, the task is skipped); each gets `instance` (0, 1, ...).
    fan_out: str | None = None
    after: tuple[str, ...] = ()  # steps that must end first (done or skipped) though the step reads nothing of theirs

    def instances(self, config: PipelineConfig) -> int:
        if self.fan_out is None:
            return 1
        section, field_name = self.fan_out.split(".")
        value = getattr(config, section)
        return int(getattr(value, field_name)) if value is not None else 0

    @property
    def config_sections(self) -> tuple[str, ...]:
        return self.config.sections()

    def load(self, function_path: str | None = None) -> Callable[..., Any]:
        module, _, function = (function_path or self.executor).partition(":")
        return getattr(importlib.import_module(module), function)


STEPS: tuple[StepSpec, ...] = (
    StepSpec("resolve", "tasks.snapshot:resolve_run",
             "Resolve the pipeline YAML and the trigger's params into the run snapshot",
             outputs={"run": RunSnapshot}, role="setup", config=CacheSections,
             params={"cache": "cache.enabled", "no_cache_steps": "cache.rerun"}),
    StepSpec("ingest", "tasks.steps.ingest:run", "CSV, Parquet or JSON lines -> Parquet examples, split train/eval by hash",
             outputs={"examples": Examples}, config=DataSections, params={"data_source": "data.source"},
             tracked=True),
    StepSpec("validate", "tasks.steps.validate:run",
             "Statistics, schema (curated or inferred) and anomalies; anomalies stop the run",
             inputs={"examples": Examples},
             outputs={"statistics": ExampleStatistics, "schema": Schema, "anomalies": ExampleAnomalies},
             config=DataSections),
    StepSpec("transform", "tasks.steps.transform:run", "Adapt the preprocessing layers on the train split",
             inputs={"examples": Examples, "schema": Schema}, outputs={"transform": TransformGraph},
             config=TransformSections),
    StepSpec("tune", "tasks.steps.tune:run",
             "Hyperparameter search: tune.parallelism instances draw trials from one Optuna study (absent: skipped)",
             inputs={"examples": Examples, "transform": TransformGraph}, config=TuneSections,
             params={"tune_trials": "tune.trials"}, timeout="tune.timeout_minutes", placed_as="train",
             fan_out="tune.parallelism"),
    StepSpec("train", "tasks.steps.train:run",
             "Train the model on N workers (MultiWorkerMirroredStrategy), with the best trial's values when tuned",
             inputs={"examples": Examples, "transform": TransformGraph}, outputs={"model": Model},
             config=TrainSections, after=("tune",),
             params={"epochs": "train.epochs", "batch_size": "train.batch_size",
                     "learning_rate": "train.learning_rate", "num_workers": "train.num_workers"},
             tracked=True, timeout="train.timeout_minutes"),
    StepSpec("optimize", "tasks.steps.optimize:run",
             "Prune and quantize (tfmot, TFLite), measure every variant, select one within the budget and write "
             "the version folder that ships",
             inputs={"model": Model, "examples": Examples}, outputs={"optimized": OptimizedModel},
             config=OptimizeSections,
             params={"target_sparsity": "optimize.target_sparsity", "variants": "optimize.variants",
                     "budget": "optimize.budget", "fine_tune_epochs": "optimize.fine_tune_epochs",
                     "serving_format": "serving.format"},
             tracked=True, timeout="optimize.timeout_minutes"),
    StepSpec("evaluate", "tasks.steps.evaluate:run",
             "The artifact that ships and the champion as served, on the eval split, overall and sliced; bless or not",
             inputs={"optimized": OptimizedModel, "model": Model, "examples": Examples},
             outputs={"evaluation": ModelEvaluation}, config=EvaluateSections,
             params={"thresholds": "evaluate.thresholds", "change_thresholds": "evaluate.change_thresholds"},
             tracked=True),
    StepSpec("register", "tasks.steps.register:run",
             "Register an MLflow model version with the version folder that ships and its model card",
             inputs={"model": Model, "evaluation": ModelEvaluation, "optimized": OptimizedModel, "schema": Schema,
                     "examples": Examples, "statistics": ExampleStatistics},
             outputs={"registered": RegisteredModel}, config=RegistrySections, tracked=True),
    StepSpec("infra_validate", "tasks.steps.infra_validate:run",
             "Load the version folder in a sandbox model server, send it real requests, time them (InfraValidator)",
             inputs={"evaluation": ModelEvaluation, "registered": RegisteredModel, "optimized": OptimizedModel,
                     "model": Model, "examples": Examples},
             outputs={"infra_blessing": InfraBlessing}, config=ServingSections, gates=("evaluation",)),
    StepSpec("push", "tasks.steps.push:run",
             "Challenger in MLflow, loaded on TF Serving as canary; only the blessed folder (same digest), "
             "model- and infra-blessed (or forced)",
             inputs={"evaluation": ModelEvaluation, "infra_blessing": InfraBlessing, "registered": RegisteredModel,
                     "optimized": OptimizedModel},
             outputs={"pushed": PushedModel}, config=ServingSections,
             params={"force_push_reason": "serving.force_push_reason"}, gates=("evaluation", "infra_blessing")),
    StepSpec("verify", "tasks.steps.verify:run",
             "Replay eval rows on the canary and check the served folder's digest; a mismatch withdraws the canary",
             inputs={"pushed": PushedModel, "evaluation": ModelEvaluation, "model": Model, "examples": Examples},
             outputs={"verification": ServingVerification}, config=ServingSections),
    StepSpec("approve", "tasks.steps.approve:run",
             "With serving.promotion: approval, a person approves the verified canary or rejects it (a rejection "
             "or a timeout withdraws it); skipped when promotion is auto",
             inputs={"evaluation": ModelEvaluation, "optimized": OptimizedModel, "pushed": PushedModel,
                     "verification": ServingVerification},
             outputs={"approval": ApprovalDecision}, config=ServingSections,
             params={"promotion": "serving.promotion", "promotion_timeout_minutes": "serving.promotion_timeout_minutes"},
             role="approval", question="tasks.steps.approve:question"),
    StepSpec("promote", "tasks.steps.promote:run",
             "Champion in MLflow, stable on the server: the verified canary (approved, when the run asks for it)",
             inputs={"pushed": PushedModel, "verification": ServingVerification, "approval": ApprovalDecision},
             outputs={"promotion": Promotion}, config=ServingSections, optional_inputs=("approval",)),
    StepSpec("finish_tracking", "tasks.tracking:finish_run", "Close the MLflow parent run as FINISHED or FAILED",
             config=ServingSections, role="teardown"),
)

# The steps of each pipeline's service DAGs: kiln_monitor_<pipeline> and kiln_serving_sync.
SERVICE_STEPS: tuple[StepSpec, ...] = (
    StepSpec("check_drift", "tasks.steps.check_drift:run",
             "The newest span against the champion's training statistics, feature by feature",
             outputs={"drift": DriftReport}, config=MonitorSections, role="service"),
    StepSpec("sync_serving", "tasks.steps.sync_serving:run",
             "TF Serving brought to what the pipeline's MLflow aliases say (champion -> stable, challenger -> canary)",
             config=ServingSections, role="service", placed_as="push"),
)

STEP_NAMES: tuple[str, ...] = tuple(spec.name for spec in STEPS)
SETUP = next(spec for spec in STEPS if spec.role == "setup")  # resolves the run snapshot
if get_args(StepName) != STEP_NAMES:  # the config validates placement.steps against StepName
    raise RuntimeError(f"tasks.config.StepName {get_args(StepName)} is not the registry's steps {STEP_NAMES}")
PARAMS: dict[str, str] = {param: path for spec in STEPS for param, path in spec.params.items()}


def step(name: str) -> StepSpec:
    for spec in (*STEPS, *SERVICE_STEPS):
        if spec.name == name:
            return spec
    raise KeyError(f"no step named {name!r}; steps are {', '.join(STEP_NAMES)} and the service steps "
                   f"{', '.join(spec.name for spec in SERVICE_STEPS)}")


def param_schema(param: str) -> dict[str, Any]:
    """JSON schema of a DAG param, as the Airflow trigger form renders it: the pydantic field's type,
    bounds and enums, a title, the field's description and where the YAML sets it, and the section of
    the step that declares it.

    Null is allowed only where the field itself is nullable (e.g. optimize.budget), and for list params,
    whose form widgets send null once emptied: there null is the empty list (`changed_params`).
    """
    section, field_name = PARAMS[param].split(".")
    annotation = PipelineConfig.model_fields[section].annotation
    # An optional section (tune: TuneConfig | None): its model.
    section_model = next((a for a in get_args(annotation) if a is not type(None)), annotation)
    full = section_model.model_json_schema()
    schema = _inline_refs(dict(full["properties"][field_name]), full.get("$defs", {}))
    schema.pop("default", None)
    nullable = section_model is not annotation  # a pipeline without the optional section has no value
    if "anyOf" in schema:  # e.g. str | None: the concrete member's type and constraints
        members = schema.pop("anyOf")
        nullable = nullable or any(s.get("type") == "null" for s in members)
        schema.update(next(s for s in members if s.get("type") != "null"))
    if schema["type"] == "array":
        nullable = True
        if "enum" in schema.get("items", {}):  # the form shows a multi-select of the allowed values
            schema["examples"] = list(schema["items"]["enum"])
    schema["type"] = [schema["type"], "null"] if nullable else schema["type"]
    spec = step_of_param(param)
    schema["title"] = param.replace("_", " ").capitalize()
    schema["description"] = f"{schema['description']} (config field {PARAMS[param]})"
    schema["section"] = "Cache" if PARAMS[param].startswith("cache.") else spec.name.capitalize()
    return schema


def param_defaults(config: PipelineConfig) -> dict[str, Any]:
    """Each DAG param's value in a pipeline's config (JSON-ready): the trigger form's prefilled values."""
    dumped = config.model_dump(mode="json", exclude_none=True)
    values = {}
    for name, path in PARAMS.items():
        section, field_name = path.split(".")
        values[name] = dumped.get(section, {}).get(field_name)
    return values


def changed_params(params: dict[str, Any], config: PipelineConfig) -> dict[str, Any]:
    """The trigger's params that change the YAML's config (loaded without expanding ${VARS}, as the DAG's
    defaults are): a param equal to the YAML's value is dropped, so the run uses the YAML itself (its
    ${VARS} expanded at run time, nothing recorded as an override). An emptied list param (null) is []."""
    yaml_values = param_defaults(config)
    changed = {}
    for name, value in params.items():
        if value is None and name in PARAMS and "array" in param_schema(name)["type"]:
            value = []
        if name in PARAMS and value == yaml_values[name]:
            continue
        changed[name] = value
    return changed


def _inline_refs(schema: Any, definitions: dict[str, Any]) -> Any:
    """Pydantic puts nested models under $defs; a DAG param's schema must stand alone."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _inline_refs(dict(definitions[schema["$ref"].rsplit("/", 1)[1]]), definitions)
        return {key: _inline_refs(value, definitions) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_inline_refs(item, definitions) for item in schema]
    return schema


def step_of_param(param: str) -> StepSpec:
    return next(spec for spec in STEPS if param in spec.params)


def apply_params(config: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    """The config with DAG params / `kiln run --param` values applied (`None` keeps the YAML's value)."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ConfigError(f"unknown parameter {unknown[0]!r}; allowed: {', '.join(PARAMS)}")
    values = {PARAMS[name]: value for name, value in params.items() if value is not None}
    return config.with_values(values) if values else config
