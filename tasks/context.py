"""What a step knows about the run it is part of, beyond its config: all of it from the run snapshot.

Steps never read `KILN_*` or `MLFLOW_*` environment variables; where artifacts go, which MLflow to
track in and which TF Serving to ship to were decided once, when the run was resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from common.storage import is_local
from serving.target import RequestLog, ServingTarget


class ServingEndpoints(BaseModel):
    """A TF Serving instance as the run snapshot records it (plain strings, so it travels as JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rest_url: str
    grpc_address: str
    model_base_path: str
    config_file: str

    def target(self) -> ServingTarget:
        def place(where: str) -> Path | str:  # object storage stays a URL
            return Path(where.removeprefix("file://")) if is_local(where) else where

        return ServingTarget(grpc_address=self.grpc_address, rest_url=self.rest_url,
                             model_base_path=place(self.model_base_path), config_file=place(self.config_file))


WORK = ".work"  # a step's work folder, beside its outputs


class NotConfiguredError(RuntimeError):
    """The run snapshot lacks a setting the step needs (e.g. no serving target)."""


@dataclass(frozen=True)
class StepContext:
    """Where one DAG run's artifacts live, which run/try this is, the run's services, the pipeline's identity
    (names, task, description, MLflow experiment) and, for a step, which step: its outputs and work folder are
    its own, so a step never names itself or its outputs."""

    artifact_root: str
    pipeline: str
    run_id: str
    try_number: int = 1
    tracking_uri: str | None = None
    serving: ServingEndpoints | None = None
    lineage: dict[str, str] = field(default_factory=dict)  # where this run came from (for MLflow tags)
    step: str = ""  # the step this context is given to ("" for the run as a whole)
    experiment: str = "kiln"  # the MLflow experiment of the pipeline's runs
    registered_model_name: str = ""
    served_model_name: str = ""
    request_log: RequestLog | None = None  # the served model's request logging (serving.request_log; None: off)
    task_type: str = ""
    description: str | None = None

    @property
    def dag_id(self) -> str:
        return f"kiln_{self.pipeline}"

    def for_step(self, step: str) -> StepContext:
        return replace(self, step=step)

    def step_folder(self, step: str | None = None) -> str:
        """`{artifact_root}/{pipeline}/{run}/{step}`: where a step's outputs go (this step's by default)."""
        step = step or self._step()
        safe_run = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in self.run_id)
        return "/".join([self.artifact_root.rstrip("/"), self.pipeline, safe_run, step])

    def output_uri(self, name: str) -> str:
        """Where this step's output `name` is published (the step runner allocates it)."""
        return f"{self.step_folder()}/{name}"

    def work_uri(self) -> str:
        """This step's work folder beside its outputs (a local path, or a URL on object storage)."""
        return self.output_uri(WORK)

    def work_dir(self) -> Path:
        """This step's scratch that outlives a failed try (so a retry resumes): beside the artifacts when they
        are local, else under the machine's temp folder."""
        import hashlib
        import tempfile

        uri = self.work_uri()
        if "://" not in uri or uri.startswith("file://"):
            return Path(uri.removeprefix("file://"))
        return Path(tempfile.gettempdir()) / "kiln-work" / hashlib.sha256(uri.encode()).hexdigest()[:16]

    def _step(self) -> str:
        if not self.step:
            raise RuntimeError("this context is the run's, not a step's: use for_step()")
        return self.step

    def require_tracking_uri(self) -> str:
        if not self.tracking_uri:
            raise NotConfiguredError("the run has no MLflow tracking URI (registry.tracking_uri or the stack's)")
        return self.tracking_uri

    def require_serving(self) -> ServingTarget:
        if self.serving is None:
            raise NotConfiguredError("the run has no TF Serving target (serving.* addresses or the stack's)")
        return self.serving.target()
