"""Registry-driven serving for a pipeline, outside a DAG run: `kiln promote`, `kiln rollback`, and the
`kiln_serving_sync` DAG's tasks.

The registered and served model names come from the pipeline's config; MLflow and TF Serving from the
pipeline's own `serving` / `registry` settings, else the deployment (the stack's or the worker's
environment). Each command moves aliases (appended to the audit history with who and why), then syncs
the server; a server that is down fails it before any alias moves, one that cannot follow puts the
aliases back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from serving.deployer import ServingDeployer
from serving.target import ServingTarget
from tasks.config import PipelineConfig
from tasks.errors import BadInputError
from tasks.model_registry import BLESSED_TAG, CHAMPION, aliases
from tasks.serving_sync import AliasChange, RegistryServing, SyncResult
from tasks.snapshot import Deployment, serving_endpoints

if TYPE_CHECKING:
    from mlflow import MlflowClient


class OperatorError(BadInputError):
    """A promote or rollback that cannot be done as asked; nothing was changed."""


@dataclass(frozen=True)
class PipelineServing:
    config: PipelineConfig
    tracking_uri: str
    target: ServingTarget

    @classmethod
    def of(cls, config: PipelineConfig, deployment: Deployment) -> PipelineServing:
        tracking_uri = deployment.tracking_uri_for(config)
        endpoints = serving_endpoints(config, deployment)
        if not tracking_uri:
            raise OperatorError(f"pipeline {config.pipeline}: no MLflow tracking URI (registry.tracking_uri or "
                                f"MLFLOW_TRACKING_URI)")
        if endpoints is None:
            raise OperatorError(f"pipeline {config.pipeline}: no TF Serving configured (serving.rest_url, "
                                f"grpc_address, model_base_path, config_file or the KILN_SERVING_* variables)")
        return cls(config, tracking_uri, endpoints.target())

    @property
    def registered_model(self) -> str:
        return self.config.registered_model_name

    @property
    def served_model(self) -> str:
        return self.config.served_model_name

    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        return MlflowClient(self.tracking_uri)

    def deployer(self) -> ServingDeployer:
        request_log = self.config.serving.request_log
        return ServingDeployer(self.target, request_logs={self.served_model: request_log and request_log.settings()})

    def release(self, by: str) -> RegistryServing:
        """Serving moved with the registry, by `by` (an operator, the sync DAG)."""
        return RegistryServing(self.client(), self.registered_model, self.served_model, self.deployer(), by)


def sync_pipeline(serving: PipelineServing) -> SyncResult:
    return serving.release("kiln_serving_sync").sync()


def promote_version(serving: PipelineServing, version: int, reason: str | None, by: str) -> AliasChange:
    """champion -> `version` (the old champion becomes previous-champion), then sync."""
    client, model = serving.client(), serving.registered_model
    tags = _version_tags(client, model, version)
    if tags.get(BLESSED_TAG) != "true" and not reason:
        failed = tags.get("kiln.failed_check") or "no blessing recorded"
        raise OperatorError(f"{model} v{version} is not blessed ({failed}); give --reason to promote it anyway")
    if aliases(client, model).get(CHAMPION) == version:
        raise OperatorError(f"{model} v{version} is already the champion")
    return serving.release(by).promote(version, f"operator promotion: {reason}" if reason else "operator promotion")


def rollback_champion(serving: PipelineServing, reason: str | None, by: str) -> AliasChange:
    """champion <-> previous-champion, then sync; a second rollback returns to where the first started."""
    return serving.release(by).rollback(f"rollback: {reason}" if reason else "rollback")


def _version_tags(client: MlflowClient, model: str, version: int) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_model_version(model, str(version)).tags)
    except MlflowException:
        raise OperatorError(f"{model} has no version {version}") from None
