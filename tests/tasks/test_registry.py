"""The step registry's integrity: unique names, one setup and one teardown step, inputs wired to earlier
outputs (like TFX channels), params that are config fields with the fields' own JSON schema, executors
that import, and step modules that never import each other."""

from __future__ import annotations

import ast
import textwrap
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from tasks.config import ConfigError, PipelineConfig, TrainConfig, load_config
from tasks.registry import (
    PARAMS,
    STEP_NAMES,
    STEPS,
    apply_params,
    changed_params,
    param_defaults,
    param_schema,
    step,
    step_of_param,
)

STEPS_DIR = Path(__file__).resolve().parents[2] / "tasks" / "steps"
# annotated_types constraint -> the JSON schema keyword pydantic writes for it
BOUND_KEYWORDS = {"ge": "minimum", "le": "maximum", "gt": "exclusiveMinimum", "lt": "exclusiveMaximum"}
JSON_TYPES = {int: "integer", float: "number", str: "string", dict: "object", bool: "boolean", list: "array",
              typing.Literal: "string"}  # kiln's Literal fields are string enums


def section_model(section: str) -> type[BaseModel]:
    """The section's model (an optional section such as `tune`: its model, not the union with None)."""
    annotation = PipelineConfig.model_fields[section].annotation
    return next((a for a in typing.get_args(annotation) if a is not type(None)), annotation)


def config_field(path: str):
    section, name = path.split(".")
    return section_model(section).model_fields[name]


def expected_bounds(field) -> dict[str, object]:
    return {keyword: getattr(constraint, attr) for constraint in field.metadata
            for attr, keyword in BOUND_KEYWORDS.items() if hasattr(constraint, attr)}


def is_nullable(field) -> bool:
    annotation = field.annotation
    is_union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    return is_union and type(None) in typing.get_args(annotation)


def expected_type(field) -> str:
    annotation = field.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is typing.Literal:  # choices: the type of its values
        annotation = type(typing.get_args(annotation)[0])
    return JSON_TYPES[typing.get_origin(annotation) or annotation]


# --- steps and wiring ----------------------------------------------------------------------------


def test_step_names_are_unique():
    assert len(set(STEP_NAMES)) == len(STEP_NAMES) == len(STEPS)


@pytest.mark.parametrize("role", ["setup", "teardown"])
def test_exactly_one_setup_and_one_teardown_step(role):
    assert len([spec for spec in STEPS if spec.role == role]) == 1


def test_setup_runs_first_and_teardown_last():
    assert (STEPS[0].role, STEPS[-1].role) == ("setup", "teardown")


def test_output_names_are_unique_across_steps():
    outputs = [name for spec in STEPS for name in spec.outputs]
    assert len(outputs) == len(set(outputs))


@pytest.mark.parametrize("spec", STEPS, ids=STEP_NAMES)
def test_inputs_are_outputs_of_earlier_steps(spec):
    earlier = {}
    for previous in STEPS[: STEP_NAMES.index(spec.name)]:
        earlier.update(previous.outputs)
    for name, kind in spec.inputs.items():
        assert name in earlier, f"{spec.name} reads {name!r}, which no earlier step writes"
        assert earlier[name] is kind, f"{spec.name} reads {name!r} as {kind.__name__}, written as {earlier[name]}"


def test_optional_inputs_are_inputs_and_only_an_approval_may_not_run():
    for spec in STEPS:
        assert set(spec.optional_inputs) <= set(spec.inputs), spec.name
        assert all(_producers()[name].role == "approval" for name in spec.optional_inputs), spec.name


def test_an_approval_asks_a_question_and_records_the_answer():
    [approval] = [spec for spec in STEPS if spec.role == "approval"]
    assert callable(approval.load(approval.question)) and callable(approval.load())
    assert [spec.question is None for spec in STEPS].count(False) == 1, "only an approval asks"


def test_producers_map_each_output_to_its_step():
    assert {name: spec.name for name, spec in _producers().items()} == {
        name: spec.name for spec in STEPS for name in spec.outputs}


def test_step_lookup():
    assert step("train").name == "train"
    with pytest.raises(KeyError, match="no step named 'trian'"):
        step("trian")


@pytest.mark.parametrize("spec", STEPS, ids=STEP_NAMES)
def test_every_executor_resolves(spec):
    assert callable(spec.load())


@pytest.mark.parametrize("spec", [s for s in STEPS if s.config_sections], ids=lambda s: s.name)
def test_config_sections_are_pipeline_config_sections(spec):
    for section in spec.config_sections:
        assert section in PipelineConfig.model_fields
        assert issubclass(section_model(section), BaseModel)


# --- params --------------------------------------------------------------------------------------


def test_param_names_are_unique_across_steps():
    names = [param for spec in STEPS for param in spec.params]
    assert len(names) == len(set(names)) == len(PARAMS)


@pytest.mark.parametrize("param", PARAMS)
def test_a_param_names_a_field_of_a_section_its_step_reads(param):
    section, name = PARAMS[param].split(".")
    assert section in step_of_param(param).config_sections
    assert name in section_model(section).model_fields


@pytest.mark.parametrize("param", PARAMS)
def test_param_schema_is_the_fields_titled_and_in_its_steps_section(param):
    field = config_field(PARAMS[param])
    schema = param_schema(param)
    kind = expected_type(field)
    # Null only where the field is nullable, in an optional section (tune: a pipeline without it has no value), or
    # for a list (the form's list widgets send null once emptied).
    section = PARAMS[param].split(".")[0]
    optional_section = section_model(section) is not PipelineConfig.model_fields[section].annotation
    assert schema["type"] == ([kind, "null"] if is_nullable(field) or optional_section or kind == "array" else kind)
    assert schema["description"] == f"{field.description} (config field {PARAMS[param]})"
    expected = "Cache" if PARAMS[param].startswith("cache.") else step_of_param(param).name.capitalize()
    assert schema["section"] == expected, "the cache's params have their own section; the others their step's"
    assert schema["title"] and schema["title"][0].isupper()
    assert "default" not in schema


def test_a_param_with_a_value_in_every_yaml_is_not_nullable():
    assert param_schema("epochs")["type"] == "integer" and param_schema("data_source")["type"] == "string"
    assert param_schema("budget")["type"] == ["number", "null"], "null: the task's default budget"
    assert param_schema("force_push_reason")["type"] == ["string", "null"], "null: no forced push"
    assert param_schema("promotion")["enum"] == ["auto", "approval"] and param_schema("promotion")["type"] == "string"


def test_a_list_param_with_allowed_values_is_a_multi_select_of_them():
    schema = param_schema("variants")
    assert schema["examples"] == schema["items"]["enum"] and "int8" in schema["examples"]


@pytest.mark.parametrize("param", PARAMS)
def test_param_schema_bounds_are_the_fields_constraints(param):
    schema = param_schema(param)
    bounds = expected_bounds(config_field(PARAMS[param]))
    assert {k: schema[k] for k in BOUND_KEYWORDS.values() if k in schema} == bounds


def test_train_params_have_bounds():
    """The bounds check above compares something: the train fields do carry constraints."""
    for param in ("epochs", "batch_size", "learning_rate", "num_workers"):
        assert expected_bounds(TrainConfig.model_fields[PARAMS[param].split(".")[1]])


# --- apply_params --------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""
        pipeline: p
        data: {source: d.csv}
        task: {type: classification}
        train: {epochs: 7, batch_size: 16}
    """))
    return load_config(path)


def test_apply_params_sets_the_fields(config):
    changed = apply_params(config, {"epochs": 3, "learning_rate": 0.01, "thresholds": {"accuracy": 0.9}})
    assert (changed.train.epochs, changed.train.learning_rate) == (3, 0.01)
    assert changed.evaluate.thresholds == {"accuracy": 0.9}
    assert changed.train.batch_size == 16


def test_none_keeps_the_yaml_value(config):
    assert apply_params(config, {"epochs": None, "batch_size": None}) == config
    assert apply_params(config, {"epochs": None, "batch_size": 8}).train.epochs == 7


def test_an_unknown_param_lists_the_allowed_ones(config):
    with pytest.raises(ConfigError, match="unknown parameter 'epocs'") as exc:
        apply_params(config, {"epocs": 3})
    assert all(param in str(exc.value) for param in PARAMS)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("param, value, field", [
    ("epochs", 0, "train.epochs"),
    ("learning_rate", 1.0, "train.learning_rate"),
    ("num_workers", 1000, "train.num_workers"),
    ("thresholds", {"rmse": 1.0}, "rmse"),
])
def test_an_invalid_value_names_the_field(config, param, value, field):
    with pytest.raises(ConfigError, match=field) as exc:
        apply_params(config, {param: value})
    assert "\n" not in str(exc.value)


# --- the trigger form's values -------------------------------------------------------------------


@pytest.fixture
def raw_config(tmp_path, monkeypatch):
    """A YAML with a ${VAR} in its data source, loaded as the DAG factory does (nothing expanded)."""
    monkeypatch.setenv("KILN_DATA", str(tmp_path))
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent("""
        pipeline: p
        data: {source: "${KILN_DATA}/d.csv"}
        task: {type: classification}
        train: {epochs: 7}
        evaluate: {thresholds: {accuracy: 0.9}, change_thresholds: {accuracy: {absolute: -0.01}}}
        optimize: {variants: [int8]}
    """))
    return path, load_config(path, expand_env=False)


def test_the_form_is_prefilled_with_the_yamls_values(raw_config):
    _, config = raw_config
    defaults = param_defaults(config)
    assert set(defaults) == set(PARAMS)
    assert defaults["data_source"] == "${KILN_DATA}/d.csv", "expanded when the run resolves, not at parse time"
    assert (defaults["epochs"], defaults["batch_size"], defaults["variants"]) == (7, 64, ["int8"])
    assert defaults["change_thresholds"] == {"accuracy": {"absolute": -0.01}}
    assert defaults["budget"] is None and defaults["force_push_reason"] is None
    assert (defaults["promotion"], defaults["promotion_timeout_minutes"]) == ("auto", 1440)


def test_a_param_equal_to_the_yamls_value_is_no_change(raw_config, tmp_path):
    path, config = raw_config
    unchanged = param_defaults(config)
    assert changed_params(unchanged, config) == {}
    assert changed_params({**unchanged, "epochs": 3}, config) == {"epochs": 3}
    # The run then uses the YAML itself: its ${VARS} expanded, as before params were prefilled.
    assert apply_params(load_config(path), changed_params(unchanged, config)).data.source == f"{tmp_path}/d.csv"


def test_an_emptied_list_param_is_the_empty_list(raw_config):
    _, config = raw_config
    assert changed_params({"variants": None}, config) == {"variants": []}
    assert changed_params({"budget": None, "force_push_reason": None}, config) == {}


# --- step modules never import each other --------------------------------------------------------


def step_imports(source: str, package: str = "tasks.steps") -> list[str]:
    """Modules under `tasks.steps` that a module in `package` imports (absolute or relative)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found += [name for name in names if name == "tasks.steps" or name.startswith("tasks.steps.")]
    return found


@pytest.mark.parametrize("source", [
    "import tasks.steps.ingest",
    "from tasks.steps import ingest",
    "from tasks.steps.ingest import run",
    "from tasks import steps",
    "from . import ingest",
    "from .ingest import run",
    "from ..steps import ingest",
    "def f():\n    from tasks.steps import train\n",
])
def test_the_import_check_sees_step_imports(source):
    assert step_imports(source)


@pytest.mark.parametrize("source", [
    "import tasks.config", "from tasks import config", "from tasks.models.export import predict",
    "from .. import config", "from ..artifacts.model import Model", "import numpy as np",
])
def test_the_import_check_ignores_other_imports(source):
    assert step_imports(source) == []


@pytest.mark.parametrize("path", sorted(STEPS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_step_module_imports_another(path):
    assert step_imports(path.read_text()) == []


def test_the_import_check_reads_every_step_executors_module():
    modules = {f"tasks.steps.{p.stem}" for p in STEPS_DIR.glob("*.py")}
    executors = {spec.executor.partition(":")[0] for spec in STEPS if spec.executor.startswith("tasks.steps.")}
    assert executors and executors <= modules


def _producers():
    """Output name -> the step that produces it (names are unique across the pipeline)."""
    return {output: spec for spec in STEPS for output in spec.outputs}
