"""The pipeline config: strict validation with one-line `ConfigError`s naming the field, paths made
absolute relative to the YAML, ${VAR} expansion, dotted-path overrides and the name defaults."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tasks.config import ConfigError, PipelineConfig, TrainConfig, load_config
from tasks.metrics import TASK_METRICS
from tasks.registry import STEP_NAMES

MINIMAL = """
    pipeline: churn
    data: {source: data/churn.csv, label_column: churned}
    task: {type: classification}
"""


def write_yaml(folder: Path, body: str, name: str = "pipeline.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


def minimal_with(tmp_path: Path, extra: str) -> Path:
    return write_yaml(tmp_path, textwrap.dedent(MINIMAL) + textwrap.dedent(extra))


def config_error(path: Path, **kwargs) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(path, **kwargs)
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_minimal_config_gets_the_defaults(tmp_path):
    config = load_config(write_yaml(tmp_path, MINIMAL))
    assert isinstance(config, PipelineConfig)
    assert config.task.type == "classification"
    assert config.train == TrainConfig()
    assert config.evaluate.thresholds == {}


# --- structure -----------------------------------------------------------------------------------


def test_the_task_section_is_required(tmp_path):
    path = write_yaml(tmp_path, "pipeline: p\ndata: {source: d.csv}\n")
    message = config_error(path)
    assert "missing field 'task'" in message and str(path) in message


def test_an_unknown_field_is_named_by_its_dotted_path(tmp_path):
    message = config_error(minimal_with(tmp_path, "train: {epochz: 3}\n"))
    assert "unknown field 'train.epochz'" in message


def test_an_unknown_section_is_named(tmp_path):
    assert "unknown field 'trainer'" in config_error(minimal_with(tmp_path, "trainer: {}\n"))


def test_an_invalid_value_is_named_by_its_dotted_path(tmp_path):
    path = write_yaml(tmp_path, "pipeline: p\ndata: {source: d.csv, eval_percent: 150}\ntask: {type: regression}\n")
    assert "field 'data.eval_percent'" in config_error(path)


def test_a_bad_pipeline_name(tmp_path):
    path = write_yaml(tmp_path, "pipeline: Bad Name\ndata: {source: d.csv}\ntask: {type: regression}\n")
    assert "field 'pipeline'" in config_error(path)


def test_a_missing_file(tmp_path):
    assert "config file not found" in config_error(tmp_path / "absent.yaml")


def test_a_file_that_is_not_yaml(tmp_path):
    path = write_yaml(tmp_path, "pipeline: [unclosed\n")
    assert "is not valid YAML" in config_error(path)


def test_a_file_that_is_not_a_mapping(tmp_path):
    assert "expected a mapping" in config_error(write_yaml(tmp_path, "- a\n- b\n"))


# --- thresholds and classes ----------------------------------------------------------------------


def test_a_threshold_the_task_lacks_is_refused_listing_the_tasks_metrics(tmp_path):
    message = config_error(minimal_with(tmp_path, "evaluate: {thresholds: {rmse: 0.5}}\n"))
    assert "'rmse' is not a classification metric" in message
    assert all(metric in message for metric in TASK_METRICS["classification"])


def test_a_classification_metric_on_a_regression_is_refused(tmp_path):
    path = write_yaml(tmp_path, """
        pipeline: p
        data: {source: d.csv}
        task: {type: regression}
        evaluate: {thresholds: {accuracy: 0.9}}
    """)
    message = config_error(path)
    assert "'accuracy' is not a regression metric" in message
    assert all(metric in message for metric in TASK_METRICS["regression"])


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_each_task_accepts_its_own_metrics(tmp_path, task):
    thresholds = ", ".join(f"{metric}: 0.5" for metric in TASK_METRICS[task])
    path = write_yaml(tmp_path, f"""
        pipeline: p
        data: {{source: d.csv}}
        task: {{type: {task}}}
        evaluate: {{thresholds: {{{thresholds}}}}}
    """)
    assert set(load_config(path).evaluate.thresholds) == set(TASK_METRICS[task])


def test_classes_on_a_regression_are_refused(tmp_path):
    path = write_yaml(tmp_path, "pipeline: p\ndata: {source: d.csv}\ntask: {type: regression, classes: [a, b]}\n")
    assert "classes are only for classification" in config_error(path)


@pytest.mark.parametrize("classes, words", [
    ("[a]", "at least two classes"),
    ("[]", "at least two classes"),
    ("[a, a]", "distinct"),
    ("[a, 1]", "must all be strings, all integers or all booleans"),
    ("[1, true]", "must all be strings, all integers or all booleans"),
])
def test_bad_class_lists_are_refused(tmp_path, classes, words):
    path = write_yaml(tmp_path, f"pipeline: p\ndata: {{source: d.csv}}\n"
                                f"task: {{type: classification, classes: {classes}}}\n")
    message = config_error(path)
    assert "field 'task'" in message and words in message


@pytest.mark.parametrize("classes, values", [("[cat, dog]", ["cat", "dog"]), ("[2, 0, 1]", [2, 0, 1]),
                                             ("[false, true]", [False, True])])
def test_class_lists_keep_their_order_and_type(tmp_path, classes, values):
    path = write_yaml(tmp_path, f"pipeline: p\ndata: {{source: d.csv}}\n"
                                f"task: {{type: classification, classes: {classes}}}\n")
    loaded = load_config(path).task.classes
    assert loaded == values and [type(v) for v in loaded] == [type(v) for v in values]


# --- placement -----------------------------------------------------------------------------------


def test_placement_of_an_unknown_step_is_refused_listing_the_steps(tmp_path):
    message = config_error(minimal_with(tmp_path, "placement: {steps: {trian: {queue: gpu}}}\n"))
    assert "placement.steps.trian.[key]" in message
    assert all(repr(step) in message for step in STEP_NAMES)


def test_placement_of_a_known_step(tmp_path):
    config = load_config(minimal_with(tmp_path, """
        placement:
          default: {executor: LocalExecutor}
          steps: {train: {executor: CeleryExecutor, queue: gpu}}
    """))
    assert config.placement.steps["train"].queue == "gpu" and "ingest" not in config.placement.steps
    assert config.placement.default.executor == "LocalExecutor"


# --- paths ---------------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_yaml(tmp_path, monkeypatch):
    folder = tmp_path / "pipelines"
    path = write_yaml(folder, """
        pipeline: p
        data: {source: ../data/d.csv, schema_path: p.schema.pbtxt}
        task: {type: regression}
        train: {model: models/x.py:build}
    """)
    monkeypatch.chdir(tmp_path)
    config = load_config(path.relative_to(tmp_path))
    assert config.data.source == str((tmp_path / "data" / "d.csv").resolve())
    assert config.data.schema_path == str((folder / "p.schema.pbtxt").resolve())
    assert config.train.model == f"{(folder / 'models' / 'x.py').resolve()}:build"


@pytest.mark.parametrize("model", ["mlp", "cnn", "tasks.models.builtin:mlp", "/abs/models/x.py:build"])
def test_model_references_that_are_not_relative_files_stay(tmp_path, model):
    path = minimal_with(tmp_path, f"train: {{model: '{model}'}}\n")
    assert load_config(path).train.model == model


@pytest.mark.parametrize("source", ["/abs/d.csv", "s3://bucket/d.csv", "file:///abs/d.csv"])
def test_absolute_sources_stay(tmp_path, source):
    path = write_yaml(tmp_path, f"pipeline: p\ndata: {{source: '{source}'}}\ntask: {{type: regression}}\n")
    assert load_config(path).data.source == source


def test_no_schema_path_stays_none(tmp_path):
    assert load_config(write_yaml(tmp_path, MINIMAL)).data.schema_path is None


# --- environment variables -----------------------------------------------------------------------


def test_variables_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_TEST_DATA", str(tmp_path / "store"))
    monkeypatch.setenv("KILN_TEST_EXPERIMENT", "exp")
    path = write_yaml(tmp_path, """
        pipeline: p
        data: {source: "${KILN_TEST_DATA}/d.csv"}
        task: {type: regression}
        registry: {experiment: $KILN_TEST_EXPERIMENT}
    """)
    config = load_config(path)
    assert config.data.source == str(tmp_path / "store" / "d.csv")
    assert config.registry.experiment == "exp"


def test_an_unset_variable_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("KILN_TEST_UNSET", raising=False)
    path = write_yaml(tmp_path, 'pipeline: p\ndata: {source: "${KILN_TEST_UNSET}/d.csv"}\ntask: {type: regression}\n')
    message = config_error(path)
    assert "environment variable KILN_TEST_UNSET, which is not set" in message


def test_without_expansion_variables_stay(tmp_path, monkeypatch):
    monkeypatch.delenv("KILN_TEST_UNSET", raising=False)
    path = write_yaml(tmp_path, 'pipeline: p\ndata: {source: "${KILN_TEST_UNSET}/d.csv"}\ntask: {type: regression}\n')
    assert load_config(path, expand_env=False).data.source == "${KILN_TEST_UNSET}/d.csv"


def test_without_expansion_the_structure_is_still_checked(tmp_path):
    path = write_yaml(tmp_path, 'pipeline: p\ndata: {source: "${X}/d.csv", nope: 1}\ntask: {type: regression}\n')
    assert "unknown field 'data.nope'" in config_error(path, expand_env=False)


# --- with_values ---------------------------------------------------------------------------------


def test_with_values_sets_dotted_fields(tmp_path):
    config = load_config(write_yaml(tmp_path, MINIMAL))
    changed = config.with_values({"train.epochs": 3, "evaluate.thresholds": {"accuracy": 0.8},
                                  "placement.default.queue": "gpu"})
    assert changed.train.epochs == 3
    assert changed.evaluate.thresholds == {"accuracy": 0.8}
    assert changed.placement.default.queue == "gpu"
    assert changed.data == config.data
    assert config.train.epochs == TrainConfig().epochs


@pytest.mark.parametrize("values, field", [
    ({"train.epochs": 0}, "train.epochs"),
    ({"train.learning_rate": 1.5}, "train.learning_rate"),
    ({"train.epochz": 3}, "train.epochz"),
    ({"data.eval_percent": "many"}, "data.eval_percent"),
])
def test_with_values_revalidates_naming_the_field(tmp_path, values, field):
    config = load_config(write_yaml(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match=f"'{field}'") as exc:
        config.with_values(values, source="--param")
    assert str(exc.value).startswith("--param: ") and "\n" not in str(exc.value)


def test_with_values_checks_the_whole_config(tmp_path):
    config = load_config(write_yaml(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match="'rmse' is not a classification metric"):
        config.with_values({"evaluate.thresholds": {"rmse": 1.0}})


# --- names ---------------------------------------------------------------------------------------


def test_model_names_default_to_the_pipeline(tmp_path):
    config = load_config(write_yaml(tmp_path, MINIMAL))
    assert config.registered_model_name == "kiln-churn"
    assert config.served_model_name == "churn"


def test_model_names_can_be_set(tmp_path):
    config = load_config(minimal_with(tmp_path, "registry: {model_name: Churn Model}\nserving: {model_name: churn-v2}\n"))
    assert config.registered_model_name == "Churn Model"
    assert config.served_model_name == "churn-v2"


def test_a_served_model_name_must_be_url_safe(tmp_path):
    assert "field 'serving.model_name'" in config_error(minimal_with(tmp_path, "serving: {model_name: 'a b'}\n"))


# --- serving.request_log ------------------------------------------------------------------------------


def test_request_logging_is_off_by_default_and_its_path_is_relative_to_the_yaml(tmp_path):
    assert load_config(write_yaml(tmp_path, MINIMAL)).serving.request_log is None
    config = load_config(minimal_with(tmp_path, "serving: {request_log: {sampling_rate: 0.1, path: logs}}\n"))
    assert config.serving.request_log.path == str(tmp_path / "logs")
    assert config.serving.request_log.settings().sampling_rate == 0.1


@pytest.mark.parametrize("rate", ["1.5", "-0.1", ".nan"])
def test_a_sampling_rate_outside_0_1_is_refused_in_one_line(tmp_path, rate):
    path = minimal_with(tmp_path, f"serving: {{request_log: {{sampling_rate: {rate}, path: logs}}}}\n")
    assert "field 'serving.request_log.sampling_rate'" in config_error(path)


TUNE = "tune: {{objective: {objective}, trials: {trials}, parallelism: {parallelism}, space: {{{space}}}}}\n"
LEARNING_RATE = "train.learning_rate: {type: float, low: 0.0005, high: 0.01, log: true}"


def tune_yaml(tmp_path: Path, objective: str = "accuracy", trials: int = 6, parallelism: int = 2,
              space: str = LEARNING_RATE, train: str = "") -> Path:
    return minimal_with(tmp_path, train + TUNE.format(objective=objective, trials=trials, parallelism=parallelism,
                                                      space=space))


def test_a_tune_section_loads_with_its_space_keyed_by_dotted_paths(tmp_path):
    space = (f"{LEARNING_RATE}, train.hparams.units: {{type: int, low: 16, high: 64}}, "
             "train.hparams.dropout: {type: choice, values: [0.0, 0.2]}")
    tune = load_config(tune_yaml(tmp_path, space=space, train="train: {hparams: {units: 32}}\n")).tune
    assert list(tune.space) == ["train.learning_rate", "train.hparams.units", "train.hparams.dropout"]
    assert (tune.trials, tune.parallelism, tune.algorithm, tune.early_stopping) == (6, 2, "tpe", True)


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"space": "train.learning_rate: {type: float, low: 0.01, high: 0.001}"}, "empty or inverted range: low 0.01"),
    ({"space": "train.batch_size: {type: int, low: 64, high: 64}"}, "empty or inverted range"),
    ({"space": "train.hparams.units: {type: int, low: 16, high: 64}"}, "'train.hparams.units' is not in the config"),
    ({"space": "train.optimizer: {type: choice, values: [adam]}"}, "'train.optimizer' is not tunable"),
    ({"space": "train.learning_rate: {type: choice, values: []}"}, "a choice takes a non-empty values list"),
    ({"objective": "rmse"}, "tune.objective: 'rmse' is not a classification metric"),
    ({"trials": 2, "parallelism": 3}, "parallelism 3 > trials 2"),
])
def test_a_bad_tune_section_is_refused_in_one_line(tmp_path, kwargs, words):
    assert words in config_error(tune_yaml(tmp_path, **kwargs))


def test_a_built_in_models_own_hparams_are_tunable_without_a_default(tmp_path):
    space = "train.hparams.dropout: {type: choice, values: [0.0, 0.3]}"
    assert "train.hparams.dropout" in load_config(tune_yaml(tmp_path, space=space)).tune.space  # mlp reads it


@pytest.mark.parametrize(("cache", "words"), [
    ("{steps: {register: {enabled: false}}}", "cache.steps.register"),
    ("{max_age: a week}", "cache.max_age"),
    ("{rerun: [push]}", "cache.rerun"),
])
def test_an_unknown_cache_policy_is_refused_in_one_line(tmp_path, cache, words):
    assert words in config_error(minimal_with(tmp_path, f"cache: {cache}\n"))


def test_a_batch_section_resolves_its_paths_against_the_yaml(tmp_path):
    batch = load_config(minimal_with(tmp_path, "batch: {data: new/*.csv, output: 'scored/{date}', shards: 4}\n")).batch
    assert batch.data == str(tmp_path / "new" / "*.csv") and batch.output == str(tmp_path / "scored") + "/{date}"
    assert (batch.alias, batch.version, batch.output_format, batch.overwrite) == ("champion", None, "parquet", False)


@pytest.mark.parametrize(("batch", "words"), [
    ("{data: d.csv, output: 'o/{day}'}", "batch.output: unknown placeholder {day}"),
    ("{data: d.csv, output: o, schedule: on_drift}", "on_drift starts retraining, not scoring"),
    ("{data: d.csv, output: o, schedule: on_new_data}", "needs batch.data with {SPAN}"),
    ("{data: d.csv, output: o, schedule: every day}", "'every day' is not a schedule"),
    ("{data: d.csv, output: o, shards: 0}", "field 'batch.shards'"),
    ("{data: d.csv}", "missing field 'batch.output'"),
])
def test_a_bad_batch_section_is_refused_in_one_line(tmp_path, batch, words):
    assert words in config_error(minimal_with(tmp_path, f"batch: {batch}\n"))
