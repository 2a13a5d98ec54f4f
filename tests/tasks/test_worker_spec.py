"""The worker spec: what a step builds is what the workers read, at a local path or a URL; a file that is not a
spec of this kiln is refused in one line naming the file and the field, and the worker exits with code 2 on it;
the paths the Kubernetes launcher checks come from the model."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.training.spec import CompressSpec, TrainSpec, WorkerSpecError, read_spec, write_spec
from tests.tasks.conftest import REPO, worker_spec


@pytest.mark.parametrize("mode", ["train", "compress"])
def test_a_spec_reads_back_as_it_was_written_locally_and_on_object_storage(tmp_path, mode) -> None:
    spec = worker_spec(tmp_path, mode, hparams={"units": [8, 4]})
    for uri in (str(tmp_path / "spec.json"), f"memory://kiln-test/{uuid.uuid4().hex}/spec.json"):
        write_spec(spec, uri)
        assert read_spec(uri) == spec
    assert type(read_spec(str(tmp_path / "spec.json"))) is (TrainSpec if mode == "train" else CompressSpec)


def test_the_paths_are_every_path_field_of_the_mode() -> None:
    train = worker_spec("s3://b/w")
    assert [name for name, _ in train.paths()] == ["train_files", "eval_files", "scratch_dir", "saved_model_dir",
                                                  "metrics_path", "backup_dir"]
    compress = worker_spec("s3://b/w", "compress")
    assert dict(compress.paths()) | {"outputs": None} == {
        "train_files": "s3://b/w/examples/train-0.parquet", "eval_files": "s3://b/w/examples/eval-0.parquet",
        "scratch_dir": "s3://b/w/scratch", "initial_weights": "s3://b/w/model/saved_model/variables/variables",
        "outputs": None, "report_path": "s3://b/w/fine_tunes.json"}
    assert [path for name, path in compress.paths() if name == "outputs"] == ["s3://b/w/pruned", "s3://b/w/qat"]


def test_a_fine_tune_without_an_output_folder_is_refused() -> None:
    with pytest.raises(ValidationError, match="outputs has no folder for qat"):
        worker_spec("s3://b/w", "compress", outputs={"pruned": "s3://b/w/pruned"})


def _written(tmp_path: Path, **changes) -> str:
    """A train spec's JSON with `changes` (None: the field removed), as a file."""
    document = worker_spec(tmp_path).model_dump(mode="json")
    for key, value in changes.items():
        if value is None:
            document.pop(key)
        else:
            document[key] = value
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(document))
    return str(path)


@pytest.mark.parametrize(("changes", "said"), [
    ({"mode": "evaluate"}, "mode: Input tag 'evaluate' found using 'mode' does not match any of the expected tags"),
    ({"mode": None}, "mode: Unable to extract tag using discriminator 'mode'"),
    ({"eval_files": None}, "eval_files: Field required"),
    ({"num_train": "many"}, "num_train: Input should be a valid integer"),
    ({"reportpath": "/tmp/r.json"}, "reportpath: Extra inputs are not permitted"),
    ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than or equal to 1"),
    ({"preprocessing": {"features": []}}, "preprocessing.label: Field required"),
])
def test_a_bad_spec_is_refused_in_one_line_naming_the_file_and_the_field(tmp_path, changes, said) -> None:
    path = _written(tmp_path, **changes)
    with pytest.raises(WorkerSpecError) as err:
        read_spec(path)
    assert str(err.value).startswith(f"worker spec {path}: {said}") and "\n" not in str(err.value)


def test_a_spec_that_is_not_json_or_not_there_is_refused_in_one_line(tmp_path) -> None:
    (tmp_path / "spec.json").write_text('{"mode": "train", ')
    with pytest.raises(WorkerSpecError, match=rf"^worker spec {tmp_path}/spec.json: Invalid JSON: EOF"):
        read_spec(str(tmp_path / "spec.json"))
    with pytest.raises(WorkerSpecError) as err:
        read_spec(str(tmp_path / "missing.json"))
    assert str(err.value).startswith(f"cannot read worker spec {tmp_path}/missing.json: [Errno 2] No such file")
    with pytest.raises(WorkerSpecError, match=r"^cannot read worker spec nowhere://b/spec.json: .*nowhere"):
        read_spec("nowhere://b/spec.json")


@pytest.mark.parametrize("case", ["unknown mode", "missing field", "unreadable file"])
def test_the_worker_exits_with_code_2_and_one_line_on_a_bad_spec(tmp_path, case) -> None:
    path = {"unknown mode": lambda: _written(tmp_path, mode="evaluate"),
            "missing field": lambda: _written(tmp_path, backup_dir=None),
            "unreadable file": lambda: str(tmp_path / "missing.json")}[case]()
    done = subprocess.run([sys.executable, "-m", "tasks.training.worker", "--spec", path], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"train_worker: {'cannot read ' if case == 'unreadable file' else ''}worker spec {path}")


def test_the_worker_imports_no_tensorflow_before_it_creates_the_strategy() -> None:
    # MultiWorkerMirroredStrategy must come before any other TensorFlow op: the entry point and both modes
    # import TensorFlow and tf_keras inside their functions only.
    code = "import sys, tasks.training.worker; print(sorted({'tensorflow', 'tf_keras'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
