"""`kiln init`: a CSV in, a loadable pipeline YAML and a curated-schema draft out; the task, classes and
blessing threshold inferred from the label; bad input is one line on stderr, exit code 2, nothing written."""

from __future__ import annotations

import csv
import random
import statistics
from collections import Counter
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from infra.cli.app import app
from tasks.config import load_config
from tasks.schema import feature_map, load_schema


def invoke(*args: str | Path) -> tuple[int, str, list[str]]:
    """Exit code, stdout and the non-blank stderr lines of `kiln <args>`."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, [line for line in result.stderr.splitlines() if line.strip()]


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def churn_csv(path: Path) -> Path:
    """30 rows: int age (3 missing), float fee, string city, bool member, label churned: 20 'no', 10 'yes'."""
    rng = random.Random(11)
    rows = []
    for i in range(30):
        age = "" if i % 10 == 3 else rng.randint(18, 80)
        rows.append([age, round(rng.uniform(5, 90), 2), rng.choice(["Oslo", "Rome", "Lima"]),
                     rng.choice(["true", "false"]), "yes" if i % 3 == 0 else "no"])
    return write_csv(path, ["age", "monthly fee", "city", "member", "churned"], rows)


def label_csv(path: Path, labels: list[object]) -> Path:
    """A feature column x and a label column y holding `labels`."""
    return write_csv(path, ["x", "y"], [[i, label] for i, label in enumerate(labels)])


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_refused(args: list[str | Path], out: Path, *words: str) -> str:
    """`kiln init` exits 2 with one line on stderr holding `words`, and writes nothing to `out`."""
    code, stdout, errors = invoke("init", *args, "--out", out)
    assert code == 2, errors
    assert len(errors) == 1, errors
    assert errors[0].startswith("error: ")
    assert all(word in errors[0] for word in words), errors[0]
    assert stdout == ""
    assert files_in(out) == []
    return errors[0]


@pytest.fixture
def churn(tmp_path):
    """`kiln init` on the churn CSV in data/, writing to pipelines/; yields (yaml path, schema path, csv)."""
    data = churn_csv(tmp_path / "data" / "churn.csv")
    out = tmp_path / "pipelines"
    code, stdout, errors = invoke("init", data, "--label", "churned", "--out", out)
    assert code == 0, errors
    return out / "churn.yaml", out / "churn.schema.pbtxt", data


# --- a classification pipeline -------------------------------------------------------------------


def test_init_writes_the_yaml_and_the_schema_only(churn):
    yaml_path, schema_path, _ = churn
    assert files_in(yaml_path.parent) == ["churn.schema.pbtxt", "churn.yaml"]


def test_init_reports_what_it_wrote(tmp_path):
    data = churn_csv(tmp_path / "churn.csv")
    code, stdout, _ = invoke("init", data, "--label", "churned", "--out", tmp_path / "out")
    assert code == 0
    assert "task: classification with classes ['no', 'yes']" in stdout
    assert "'monthly fee' is served as 'monthly_fee'" in stdout


def test_the_yaml_loads_as_a_classification(churn):
    yaml_path, schema_path, data = churn
    config = load_config(yaml_path)
    assert config.pipeline == "churn"
    assert config.data.label_column == "churned"
    assert config.task.type == "classification"
    assert config.task.classes == ["no", "yes"]
    assert config.data.source == str(data.resolve())
    assert config.data.schema_path == str(schema_path.resolve())
    assert config.train.model == "mlp"


def test_the_data_source_is_relative_to_the_yaml(churn):
    yaml_path, _, _ = churn
    assert yaml.safe_load(yaml_path.read_text())["data"]["source"] == "../data/churn.csv"


def test_the_accuracy_threshold_is_the_majority_share_rounded_down(churn):
    yaml_path, _, _ = churn
    assert load_config(yaml_path).evaluate.thresholds == {"accuracy": 0.66}  # 20 of 30 rows are "no"


def test_the_schema_has_domains_types_and_presence(churn):
    _, schema_path, _ = churn
    features = feature_map(load_schema(str(schema_path)))
    assert list(features) == ["age", "monthly fee", "city", "member", "churned"]
    assert list(features["city"].string_domain.value) == ["Lima", "Oslo", "Rome"]
    assert list(features["churned"].string_domain.value) == ["no", "yes"]
    assert features["member"].HasField("bool_domain")
    assert features["age"].presence.min_fraction == 0.0
    assert features["monthly fee"].presence.min_fraction == 1.0


def test_an_integer_label_with_few_values_is_a_classification(tmp_path):
    data = label_csv(tmp_path / "codes.csv", [2, 0, 1, 1, 0, 2, 1, 1])
    code, _, errors = invoke("init", data, "--label", "y", "--out", tmp_path / "out")
    assert code == 0, errors
    config = load_config(tmp_path / "out" / "codes.yaml")
    assert config.task.type == "classification"
    assert config.task.classes == [0, 1, 2]
    assert all(type(c) is int for c in config.task.classes)
    assert config.evaluate.thresholds == {"accuracy": 0.5}


def test_an_integer_label_with_many_values_is_a_regression(tmp_path):
    data = label_csv(tmp_path / "counts.csv", list(range(0, 60, 2)))
    code, _, errors = invoke("init", data, "--label", "y", "--out", tmp_path / "out")
    assert code == 0, errors
    config = load_config(tmp_path / "out" / "counts.yaml")
    assert (config.task.type, config.task.classes) == ("regression", None)


def test_a_float_label_is_a_regression_with_the_std_as_rmse_threshold(tmp_path):
    rng = random.Random(5)
    prices = [round(rng.uniform(100, 900), 3) for _ in range(40)]
    data = label_csv(tmp_path / "house.csv", prices)
    code, _, errors = invoke("init", data, "--label", "y", "--out", tmp_path / "out")
    assert code == 0, errors
    config = load_config(tmp_path / "out" / "house.yaml")
    assert config.task.type == "regression"
    assert config.task.classes is None
    assert config.evaluate.thresholds == {"rmse": float(f"{statistics.pstdev(prices):.4g}")}


def test_a_task_can_be_forced_on_an_integer_label(tmp_path):
    data = label_csv(tmp_path / "codes.csv", [2, 0, 1, 1])
    code, _, errors = invoke("init", data, "--label", "y", "--task", "regression", "--out", tmp_path / "out")
    assert code == 0, errors
    assert load_config(tmp_path / "out" / "codes.yaml").task.type == "regression"


def test_the_accuracy_threshold_of_an_exact_two_decimal_share(tmp_path):
    data = label_csv(tmp_path / "share.csv", ["a"] * 57 + ["b"] * 43)
    code, _, errors = invoke("init", data, "--label", "y", "--out", tmp_path / "out")
    assert code == 0, errors
    assert load_config(tmp_path / "out" / "share.yaml").evaluate.thresholds == {"accuracy": 0.57}


def test_the_majority_share_counts_typed_classes(tmp_path):
    labels = ["true", "True", "TRUE", "false", "false", "true"]
    data = label_csv(tmp_path / "flags.csv", labels)
    code, _, errors = invoke("init", data, "--label", "y", "--out", tmp_path / "out")
    assert code == 0, errors
    config = load_config(tmp_path / "out" / "flags.yaml")
    assert config.task.classes == [False, True]
    share = max(Counter(label.lower() for label in labels).values()) / len(labels)
    assert config.evaluate.thresholds == {"accuracy": int(share * 100) / 100}


# --- names ---------------------------------------------------------------------------------------


def test_the_default_name_is_the_sanitised_file_name(tmp_path):
    data = churn_csv(tmp_path / "My Churn (v2).csv")
    code, _, errors = invoke("init", data, "--label", "churned", "--out", tmp_path / "out")
    assert code == 0, errors
    assert files_in(tmp_path / "out") == ["my-churn-v2.schema.pbtxt", "my-churn-v2.yaml"]
    assert load_config(tmp_path / "out" / "my-churn-v2.yaml").pipeline == "my-churn-v2"


def test_a_file_name_without_a_leading_letter_or_digit(tmp_path):
    data = churn_csv(tmp_path / "__.csv")
    code, _, errors = invoke("init", data, "--label", "churned", "--out", tmp_path / "out")
    assert code == 0, errors
    assert load_config(tmp_path / "out" / "p.yaml").pipeline == "p"


def test_a_given_name(tmp_path):
    data = churn_csv(tmp_path / "churn.csv")
    code, _, errors = invoke("init", data, "--label", "churned", "--name", "churn_v3", "--out", tmp_path / "out")
    assert code == 0, errors
    assert load_config(tmp_path / "out" / "churn_v3.yaml").pipeline == "churn_v3"


@pytest.mark.parametrize("name", ["Churn", "churn v3", "-churn", "churn/x"])
def test_a_bad_name(tmp_path, name):
    data = churn_csv(tmp_path / "churn.csv")
    assert_refused([data, "--label", "churned", "--name", name], tmp_path / "out", f"--name {name!r}")


# --- refused input -------------------------------------------------------------------------------


def test_a_regression_on_a_string_label(tmp_path):
    data = churn_csv(tmp_path / "churn.csv")
    assert_refused([data, "--label", "churned", "--task", "regression"], tmp_path / "out",
                   "'churned' holds string values", "use --task classification")


def test_a_classification_on_a_float_label(tmp_path):
    data = label_csv(tmp_path / "house.csv", [1.5, 2.25, 3.0])
    assert_refused([data, "--label", "y", "--task", "classification"], tmp_path / "out",
                   "'y' holds floats", "use --task regression")


def test_an_unknown_task(tmp_path):
    data = churn_csv(tmp_path / "churn.csv")
    assert_refused([data, "--label", "churned", "--task", "ranking"], tmp_path / "out", "--task 'ranking'")


def test_a_missing_csv(tmp_path):
    data = tmp_path / "absent.csv"
    assert_refused([data, "--label", "y"], tmp_path / "out", "data source not found", str(data))


def test_an_empty_csv(tmp_path):
    data = tmp_path / "empty.csv"
    data.write_text("")
    assert_refused([data, "--label", "y"], tmp_path / "out", str(data), "empty")


def test_a_header_only_csv(tmp_path):
    data = tmp_path / "header.csv"
    data.write_text("x,y\n")
    assert_refused([data, "--label", "y"], tmp_path / "out", str(data), "no data rows")


def test_a_label_that_is_not_in_the_header(tmp_path):
    data = churn_csv(tmp_path / "churn.csv")
    assert_refused([data, "--label", "target"], tmp_path / "out", "label column 'target' is not in the header",
                   "columns: age, monthly fee, city, member, churned")


def test_a_label_with_one_class(tmp_path):
    data = label_csv(tmp_path / "one.csv", ["a", "a", "", "a"])
    assert_refused([data, "--label", "y"], tmp_path / "out", "'y' has only one value ('a')", "at least two classes")


def test_a_label_without_values(tmp_path):
    data = label_csv(tmp_path / "none.csv", ["", "", ""])
    assert_refused([data, "--label", "y"], tmp_path / "out", "'y' has no values")


def test_existing_files_are_kept_without_force(tmp_path):
    data = churn_csv(tmp_path / "churn.csv")
    out = tmp_path / "out"
    out.mkdir()
    (out / "churn.schema.pbtxt").write_text("# curated by hand\n")
    code, stdout, errors = invoke("init", data, "--label", "churned", "--out", out)
    assert code == 2 and stdout == ""
    assert errors == [f"error: {out / 'churn.schema.pbtxt'} exists; pass --force to overwrite it"]
    assert files_in(out) == ["churn.schema.pbtxt"]
    assert (out / "churn.schema.pbtxt").read_text() == "# curated by hand\n"


def test_force_overwrites_existing_files(tmp_path):
    data = churn_csv(tmp_path / "churn.csv")
    out = tmp_path / "out"
    out.mkdir()
    (out / "churn.yaml").write_text("old: yaml\n")
    (out / "churn.schema.pbtxt").write_text("# old schema\n")
    code, _, errors = invoke("init", data, "--label", "churned", "--out", out, "--force")
    assert code == 0, errors
    assert files_in(out) == ["churn.schema.pbtxt", "churn.yaml"]
    assert load_config(out / "churn.yaml").task.classes == ["no", "yes"]
    assert "churned" in feature_map(load_schema(str(out / "churn.schema.pbtxt")))


@pytest.mark.parametrize("suffix, data_format", [(".parquet", None), (".jsonl", None), (".bin", "parquet"),
                                                  (".records", "tfrecord")])
def test_init_takes_parquet_and_json_lines_and_a_named_format(tmp_path, suffix, data_format):
    import json

    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    table = pa_csv.read_csv(churn_csv(tmp_path / "churn.csv"))
    data = tmp_path / f"churn{suffix}"
    if suffix == ".jsonl":
        data.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    elif data_format == "tfrecord":
        from tests.tasks.test_data_readers import write_tfrecord

        write_tfrecord(data, table.to_pylist())
    else:
        pq.write_table(table, data)
    code, stdout, errors = invoke("init", data, "--label", "churned", "--out", tmp_path / "out",
                                  *(["--format", data_format] if data_format else []))
    assert code == 0, errors
    assert "task: classification with classes ['no', 'yes']" in stdout
    config = load_config(tmp_path / "out" / "churn.yaml")
    assert config.data.source == str(data.resolve()) and config.data.format == data_format


def test_init_refuses_a_file_of_no_known_format_in_one_line(tmp_path):
    data = tmp_path / "churn.bin"
    data.write_bytes(b"\x00\x01")
    code, _, errors = invoke("init", data, "--label", "churned", "--out", tmp_path / "out")
    assert code != 0 and len(errors) == 1 and "cannot tell the format" in errors[0] and "churn.bin" in errors[0]


def test_init_on_an_image_folder_writes_its_shape_classes_and_a_cnn(tmp_path):
    from PIL import Image

    from tests.images import write_image_folder

    data = write_image_folder(tmp_path / "stripes", per_class=4, size=(300, 600))
    grey = data / "vertical" / "0001.png"  # one greyscale image does not make the folder greyscale: the first decides
    Image.open(grey).convert("L").save(grey)
    code, stdout, errors = invoke("init", data, "--out", tmp_path / "out")
    assert code == 0, errors
    assert "task: classification with classes ['horizontal', 'vertical']" in stdout
    config = load_config(tmp_path / "out" / "stripes.yaml")
    assert config.data.format == "images" and config.data.label_column == "label"
    assert config.data.image_shape == (112, 224, 3), "the first image's aspect, its long side 224"
    assert config.train.model == "cnn"
    schema = feature_map(load_schema(str(tmp_path / "out" / "stripes.schema.pbtxt")))
    assert schema["image"].HasField("image_domain")
    assert list(schema["label"].string_domain.value) == ["horizontal", "vertical"]


def test_init_on_a_table_without_a_label_asks_for_one(tmp_path):
    assert_refused([churn_csv(tmp_path / "churn.csv")], tmp_path / "out", "--label")
