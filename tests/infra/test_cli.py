"""The CLI's bad-input paths: one clear line on stderr, a non-zero exit, nothing started or written.

`kiln run` checks everything it can before it needs a stack, so these tests run without one: a config
that gets past every check ends at "no stack is running".
"""

from __future__ import annotations

import socket
import textwrap

import pytest
from typer.testing import CliRunner

from infra.cli.app import app


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_HOME", str(tmp_path / "kiln"))
    return tmp_path / "kiln"


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    return result.exit_code, lines


def write_config(tmp_path, body: str):
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,label\n1,0\n")
    return path


def test_unknown_config_field_is_named(tmp_path, home, data):
    config = write_config(tmp_path, f"""
        pipeline: p
        data: {{source: {data}}}
        task: {{type: classification}}
        train: {{epochz: 3}}
    """)
    code, lines = invoke("run", str(config))
    assert code == 2
    assert len(lines) == 1 and "unknown field 'train.epochz'" in lines[0]


def test_a_missing_task_is_named(tmp_path, home, data):
    config = write_config(tmp_path, f"pipeline: p\ndata: {{source: {data}}}\n")
    code, lines = invoke("run", str(config))
    assert code == 2 and len(lines) == 1 and "missing field 'task'" in lines[0]


def test_invalid_value_is_named(tmp_path, home):
    config = write_config(tmp_path, """
        pipeline: p
        data: {source: x.csv, eval_percent: 150}
        task: {type: regression}
    """)
    code, lines = invoke("run", str(config))
    assert code == 2 and len(lines) == 1 and "data.eval_percent" in lines[0]


def test_missing_data_path(tmp_path, home):
    config = write_config(tmp_path, "pipeline: p\ndata: {source: /nope/digits.csv}\ntask: {type: regression}\n")
    code, lines = invoke("run", str(config))
    assert code == 2 and lines == [f"error: data source not found: /nope/digits.csv (data.source in {config})"]


def test_unknown_param(tmp_path, home, data):
    config = write_config(tmp_path, f"pipeline: p\ndata: {{source: {data}}}\ntask: {{type: regression}}\n")
    code, lines = invoke("run", str(config), "--param", "epocs=3")
    assert code == 2 and len(lines) == 1 and "unknown parameter 'epocs'" in lines[0]
    code, lines = invoke("run", str(config), "--param", "epochs")
    assert code == 2 and "expected key=value" in lines[0]
    code, lines = invoke("run", str(config), "--param", "epochs=0")
    assert code == 2 and len(lines) == 1 and "field 'train.epochs'" in lines[0]


def test_a_threshold_the_task_lacks_is_refused(tmp_path, home, data):
    config = write_config(tmp_path, f"pipeline: p\ndata: {{source: {data}}}\ntask: {{type: regression}}\n")
    code, lines = invoke("run", str(config), "--param", "thresholds={accuracy: 0.9}")
    assert code == 2 and len(lines) == 1 and "'accuracy' is not a regression metric" in lines[0]


MODULES = {
    "ok.py": "import tf_keras as keras\ndef build(inputs, hparams):\n    return keras.layers.Dense(4)(inputs)\n",
    "none.py": "def build(inputs, hparams):\n    return None\n",
    "broken.py": "import nothing_like_this\n",
}


@pytest.mark.parametrize(("model", "message"), [
    ("models/absent.py:build", r"train.model '.*/models/absent.py:build': file not found: .*/models/absent.py"),
    ("models/ok.py:missing", r"train.model '.*ok.py:missing': .*ok.py has no function 'missing'"),
    ("models/none.py:build", r"train.model '.*none.py:build' returned NoneType; it must return a Keras tensor"),
    ("models/broken.py:build", r"importing .*broken.py failed: ModuleNotFoundError: No module named 'nothing_like_this'"),
    ("no.such.module:build", r"train.model 'no.such.module:build': cannot import no.such.module"),
], ids=["no-file", "no-function", "returns-none", "import-fails", "no-module"])
def test_a_bad_model_module_is_caught_before_the_run_is_triggered(model, message, tmp_path, home, data):
    (tmp_path / "models").mkdir()
    for name, text in MODULES.items():
        (tmp_path / "models" / name).write_text(text)
    config = write_config(tmp_path, f"""
        pipeline: p
        data: {{source: {data}}}
        task: {{type: classification}}
        train: {{model: "{model}"}}
    """)
    code, lines = invoke("run", str(config))
    assert code == 2 and len(lines) == 1, lines
    import re

    assert re.search(message, lines[0]), lines[0]


def test_a_good_model_module_gets_as_far_as_the_stack(tmp_path, home, data):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ok.py").write_text(MODULES["ok.py"])
    config = write_config(tmp_path, f"pipeline: p\ndata: {{source: {data}}}\ntask: {{type: regression}}\n"
                                    f"train: {{model: models/ok.py:build}}\n")
    code, lines = invoke("run", str(config))
    assert code == 2 and len(lines) == 1 and "no stack is running" in lines[0]


def test_missing_config_file(tmp_path, home):
    code, lines = invoke("run", str(tmp_path / "absent.yaml"))
    assert code == 2 and len(lines) == 1 and "config file not found" in lines[0]


def test_port_in_use_is_reported_by_name(home, port_factory):
    ports = [port_factory() for _ in range(4)]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        code, lines = invoke("up", "--airflow-port", str(ports[0]), "--mlflow-port", str(taken),
                             "--rest-port", str(ports[1]), "--grpc-port", str(ports[2]))
    assert code == 2
    assert lines == [f"error: port {taken} (mlflow) is already in use on 127.0.0.1"]
    assert not (home / "stack.json").exists(), "nothing may be recorded as started"


def test_demo_data_writes_each_pipelines_data_source(home):
    code, lines = invoke("run")
    assert code == 2 and len(lines) == 1 and "`kiln demo-data` writes the demo data sets there" in lines[0]
    code, lines = invoke("demo-data")
    assert code == 0
    assert sum(1 for _ in (home / "data" / "digits.csv").open()) == 1798
    assert sum(1 for _ in (home / "data" / "cancer.csv").open()) == 570
    assert sum(1 for _ in (home / "data" / "diabetes.csv").open()) == 443
    code, lines = invoke("demo-data", "--pipeline", "nope")
    assert code == 2 and lines == ["error: --pipeline 'nope': demo data sets are digits, cancer, diabetes"]


def test_the_shipped_pipelines_are_valid_and_get_as_far_as_the_stack(home):
    assert invoke("demo-data")[0] == 0
    for name in ("digits", "cancer", "diabetes"):
        code, lines = invoke("run", f"pipelines/{name}.yaml")
        assert code == 2 and lines == [f"error: no stack is running for KILN_HOME={home}; start one with `kiln up`"]


def test_lineage_of_an_unknown_version_is_one_line(home, tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, lines = invoke("lineage", "kiln-nothing", "3", "--tracking-uri", store)
    lines = [line for line in lines if "mlflow.store.db.utils" not in line]  # MLflow creating the new store
    assert code == 2 and lines == [f"error: no version 3 of registered model 'kiln-nothing' at {store}"]
    code, lines = invoke("lineage", "digits", "1")
    assert code == 2 and len(lines) == 1 and "no stack is running" in lines[0]


def test_steps_lists_the_registry():
    from tasks.registry import STEP_NAMES

    code, lines = invoke("steps")
    assert code == 0
    text = "\n".join(lines)
    assert all(name in text for name in STEP_NAMES)


@pytest.mark.parametrize("command", [["rollback", "digits"], ["promote", "digits", "2"], ["sync", "digits"]])
def test_the_serving_commands_resolve_a_shipped_pipeline_without_kiln_home_set(tmp_path, monkeypatch, command):
    """digits.yaml reads ${KILN_HOME}/data: the commands set it from --home (or the default), as `kiln run` does."""
    monkeypatch.delenv("KILN_HOME", raising=False)
    home = tmp_path / "elsewhere"
    code, lines = invoke(*command, "--home", str(home))
    assert code == 2 and lines == [f"error: no stack is running for KILN_HOME={home}; start one with `kiln up`"]
