"""What a step knows about the run it is part of, beyond its config: all of it from the run snapshot.

Steps never read `KILN_*` or `MLFLOW_*` environment variables; where artifacts go, which MLflow to
track in and which TF Serving to ship to were decided once, when the run was resolved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class ServingEndpoints(BaseModel):
    """A TF Serving instance as the run snapshot records it (plain strings, so it travels as JSON)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rest_url: str
    grpc_address: str
    model_base_path: str
    config_file: str

    def target(self):  # -> serving.target.ServingTarget (imported lazily: tasks does not need serving)
        from common.storage import is_local
        from serving.target import ServingTarget

        def place(where: str) -> Path | str:  # object storage stays a URL
            return Path(where.removeprefix("file://")) if is_local(where) else where

        return ServingTarget(grpc_address=self.grpc_address, rest_url=self.rest_url,
                             model_base_path=place(self.model_base_path), config_file=place(self.config_file))


class NotConfiguredError(RuntimeError):
    """The run snapshot lacks a setting the step needs (e.g. no serving target)."""


@dataclass(frozen=True)
class StepContext:
    """Where one DAG run's artifacts live, which run/try this is, and the run's services."""

    artifact_root: str
    pipeline: str
    run_id: str
    try_number: int = 1
    tracking_uri: str | None = None
    serving: ServingEndpoints | None = None
    lineage: dict[str, str] = field(default_factory=dict)  # where this run came from (for MLflow tags)

    @property
    def dag_id(self) -> str:
        return f"kiln_{self.pipeline}"

    def output_uri(self, step: str, name: str) -> str:
        safe_run = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in self.run_id)
        return "/".join([self.artifact_root.rstrip("/"), self.pipeline, safe_run, step, name])

    def work_dir(self, step: str) -> Path:
        """A step's scratch that outlives a failed try (so a retry resumes): beside the artifacts when they
        are local, else under the machine's temp folder."""
        import hashlib
        import tempfile

        uri = self.output_uri(step, ".work")
        if "://" not in uri or uri.startswith("file://"):
            return Path(uri.removeprefix("file://"))
        return Path(tempfile.gettempdir()) / "kiln-work" / hashlib.sha256(uri.encode()).hexdigest()[:16]

    def require_tracking_uri(self) -> str:
        if not self.tracking_uri:
            raise NotConfiguredError("the run has no MLflow tracking URI (registry.tracking_uri or the stack's)")
        return self.tracking_uri

    def require_serving(self):  # -> serving.target.ServingTarget
        if self.serving is None:
            raise NotConfiguredError("the run has no TF Serving target (serving.* addresses or the stack's)")
        return self.serving.target()
