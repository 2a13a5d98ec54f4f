"""The worker spec: what the train and optimize steps hand their training workers, as one typed file.

A step builds a `TrainSpec` (train a model from scratch) or a `CompressSpec` (fine-tune a trained one into
compressed variants); its launcher writes it with `write_spec` (a local file for local workers, a URL on object
storage for pods) and every worker reads it back with `read_spec`, which refuses a file that is not a spec of
this kiln in one line naming the file and the first bad field. Paths are local paths or fsspec URLs; the fields
that hold them say so (`PATHS`), so the Kubernetes launcher's check that pods get URLs only lists them from the
model (`WorkerSpecBase.paths`) instead of by name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from common import storage
from tasks.compression.variants import FineTuneName
from tasks.config import TrainConfig
from tasks.features import DEFAULT_MEMORY_BUDGET, Preprocessing


class WorkerSpecError(ValueError):
    """A worker spec file that cannot be read or is not a spec; one line naming the file and the field."""


class HoldsPaths:
    """Field metadata: the field holds local paths or fsspec URLs (one, a list, or a mapping's values)."""


PATHS = HoldsPaths()


class WorkerSpecBase(BaseModel):
    """What workers of either mode read: the data, the model to build and how to train it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_files: Annotated[list[str], PATHS]
    eval_files: Annotated[list[str], PATHS]
    num_train: int
    num_eval: int
    preprocessing: Preprocessing
    model: str  # train.model: a built-in body or a file/module reference
    hparams: dict[str, Any]
    train: TrainConfig
    memory_budget: int = DEFAULT_MEMORY_BUDGET  # bytes of a split the workers may cache (data.memory_budget)
    # TensorFlow's own files go to a local folder: this one when it is local, else one of the worker's own.
    scratch_dir: Annotated[str, PATHS]

    def paths(self) -> Iterator[tuple[str, str]]:
        """(field, path) for every path the spec holds, in field order."""
        for name, field in type(self).model_fields.items():
            if PATHS not in field.metadata:
                continue
            value = getattr(self, name)
            for path in value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]:
                yield name, path


class TrainSpec(WorkerSpecBase):
    """Fit the model; the chief exports it and records each epoch's metrics. The backup lets a restarted
    group resume at the last finished epoch."""

    mode: Literal["train"] = "train"
    saved_model_dir: Annotated[str, PATHS]
    metrics_path: Annotated[str, PATHS]
    backup_dir: Annotated[str, PATHS]


class CompressSpec(WorkerSpecBase):
    """Fine-tune the trained model (`initial_weights`, a checkpoint prefix) into each of `fine_tunes`, each
    exported to its folder in `outputs`; the chief writes what each took, or why it was skipped, to
    `report_path`."""

    mode: Literal["compress"] = "compress"
    initial_weights: Annotated[str, PATHS]
    fine_tunes: list[FineTuneName]
    fine_tune_epochs: int
    learning_rate: float
    target_sparsity: float
    prune_skip: list[str]
    outputs: Annotated[dict[FineTuneName, str], PATHS]
    report_path: Annotated[str, PATHS]

    @model_validator(mode="after")
    def _an_output_per_fine_tune(self) -> CompressSpec:
        missing = [job for job in self.fine_tunes if job not in self.outputs]
        if missing:
            raise ValueError(f"outputs has no folder for {', '.join(missing)}")
        return self


WorkerSpec = Annotated[TrainSpec | CompressSpec, Field(discriminator="mode")]
_WORKER_SPEC: TypeAdapter[WorkerSpec] = TypeAdapter(WorkerSpec)
MODES = tuple(model.model_fields["mode"].default for model in (TrainSpec, CompressSpec))


def write_spec(spec: WorkerSpec, uri: str) -> None:
    """The spec as JSON at a local path or any fsspec URL, replaced whole (see `common.storage.write_text`)."""
    storage.write_text(uri, spec.model_dump_json())


def read_spec(uri: str) -> WorkerSpec:
    """The spec at a local path or any fsspec URL (pods on Kubernetes read it from object storage)."""
    try:
        text = storage.read_text(uri)
    except (OSError, ValueError, ImportError) as exc:  # ValueError: an unknown protocol; ImportError: its driver
        raise WorkerSpecError(f"cannot read worker spec {uri}: {_first_line(exc)}") from None
    try:
        return _WORKER_SPEC.validate_json(text)
    except ValidationError as exc:
        raise WorkerSpecError(f"worker spec {uri}: {_first_problem(exc)}") from None


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return f"mode: {error['msg']}"
    # The discriminated union puts the mode first (("train", "eval_files")): the field is what follows it.
    location = error["loc"][1:] if error["loc"] and error["loc"][0] in MODES else error["loc"]
    field = ".".join(str(part) for part in location)
    return f"{field}: {_first_line(error['msg'])}" if field else _first_line(error["msg"])


def _first_line(what: object) -> str:
    lines = str(what).splitlines()
    return lines[0] if lines else type(what).__name__
