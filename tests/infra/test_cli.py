"""The CLI's bad-input paths: one clear line on stderr, a non-zero exit, nothing started or written."""

from __future__ import annotations

import socket
import textwrap

import pytest
from typer.testing import CliRunner

from infra.cli import app


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


def test_unknown_config_field_is_named(tmp_path, home):
    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n")
    config = write_config(tmp_path, f"""
        pipeline: p
        data: {{source: {data}}}
        train: {{epochz: 3}}
    """)
    code, lines = invoke("run", str(config))
    assert code == 2
    assert len(lines) == 1 and "unknown field 'train.epochz'" in lines[0]


def test_invalid_value_is_named(tmp_path, home):
    config = write_config(tmp_path, """
        pipeline: p
        data: {source: x.csv, eval_percent: 150}
    """)
    code, lines = invoke("run", str(config))
    assert code == 2 and len(lines) == 1 and "data.eval_percent" in lines[0]


def test_missing_data_path(tmp_path, home):
    config = write_config(tmp_path, "pipeline: p\ndata: {source: /nope/digits.csv}\n")
    code, lines = invoke("run", str(config))
    assert code == 2 and lines == ["error: data source not found: /nope/digits.csv (data.source in " + str(config) + ")"]


def test_unknown_param(tmp_path, home):
    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n")
    config = write_config(tmp_path, f"pipeline: p\ndata: {{source: {data}}}\n")
    code, lines = invoke("run", str(config), "--param", "epocs=3")
    assert code == 2 and len(lines) == 1 and "unknown parameter 'epocs'" in lines[0]
    code, lines = invoke("run", str(config), "--param", "epochs")
    assert code == 2 and "expected key=value" in lines[0]


def test_run_without_a_stack(tmp_path, home):
    data = tmp_path / "d.csv"
    data.write_text("a,label\n1,0\n")
    config = write_config(tmp_path, f"pipeline: p\ndata: {{source: {data}}}\n")
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


def test_demo_data_writes_the_default_data_source(home):
    code, lines = invoke("run")
    assert code == 2 and len(lines) == 1 and "`kiln demo-data` writes the demo data set there" in lines[0]
    code, lines = invoke("demo-data")
    assert code == 0 and (home / "data" / "digits.csv").is_file()
    assert sum(1 for _ in (home / "data" / "digits.csv").open()) == 1798
