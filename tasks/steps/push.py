"""Push: ship the version folder evaluate blessed to TF Serving as version N (= MLflow version N), as canary.

Gated twice (the step runner skips it otherwise): the model blessing (unless the run was triggered with
`force_push_reason`, which is then recorded on the MLflow version and in the alias history) and the
infra blessing (the same folder loaded and answered in a sandbox). The registry leads: the version
becomes `challenger` in MLflow, then a serving sync loads it beside the champion and labels it canary
(the previous champion stays loaded: the rollback target). A server that is down fails the step before
anything is written; a load that fails puts the alias and the server back as they were. A folder whose digest
is not the one evaluate recorded is refused before anything changes: only the blessed bytes ship.
"""

from __future__ import annotations

import logging

from common.digest import folder_digest
from tasks import tracking
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.optimized import VERSION_FOLDER, OptimizedModel
from tasks.artifacts.pushed import PushedModel, PushedProperties
from tasks.artifacts.registered import RegisteredModel
from tasks.config import PipelineConfig
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.model_registry import CHALLENGER, move_alias
from tasks.serving_sync import move_and_sync

log = logging.getLogger(__name__)


class DigestMismatch(BadInputError):
    """The folder to ship is not the one evaluate blessed."""


def run(config: PipelineConfig, ctx: StepContext, evaluation: str, infra_blessing: str,
        registered: str, optimized: str) -> dict[str, str]:
    del infra_blessing  # a gate: read by the step runner
    from serving.deployer import ServingDeployer

    registration = RegisteredModel.read(registered)
    model_name, version = registration.properties.model_name, registration.properties.version
    name = config.served_model_name
    evaluated = ModelEvaluation.read(evaluation).properties
    shipping = OptimizedModel.read(optimized)
    # A local copy of the version folder (the artifact may be on object storage); the deployer uploads it when
    # the model base path is on object storage too.
    folder = shipping.local(VERSION_FOLDER)
    sha256 = folder_digest(folder)
    if sha256 != evaluated.artifact_sha256:
        raise DigestMismatch(f"push of {name} v{version} refused: {shipping.version_folder} has digest {sha256[:12]}, "
                             f"evaluate blessed {evaluated.artifact_sha256[:12]}; nothing was changed")
    target = ctx.require_serving()
    deployer = ServingDeployer(target)
    deployer.served(name)  # a server that is down fails the push here, before anything is written
    client = tracking.client(ctx)
    # The gate let an unblessed model through only with a reason: record it with the version.
    forced = None if evaluated.blessed else config.serving.force_push_reason
    if forced:
        client.set_model_version_tag(model_name, str(version), "kiln.forced_push_reason", forced)
    version_dir = deployer.stage_version(name, version, folder, {})
    by = f"{ctx.dag_id} run {ctx.run_id}"
    why = f"forced: {forced}" if forced else "model- and infra-blessed"
    try:
        _, synced = move_and_sync(client, model_name, name, deployer,
                                  lambda: move_alias(client, model_name, CHALLENGER, version, why, by),
                                  f"push of v{version} failed", by)
    except Exception:
        deployer.unstage(name, version)
        raise
    served = synced.after
    out_uri = ctx.output_uri("push", "pushed")
    with PushedModel.publish(out_uri) as out:
        out.properties = PushedProperties(serving_model_name=name, version=version, version_dir=str(version_dir),
                                          versions=list(served.versions), labels=served.labels,
                                          rest_url=target.rest_url, grpc_address=target.grpc_address,
                                          forced_reason=forced, artifact_sha256=sha256,
                                          artifact_format=evaluated.shipped_format)
    log.info("push: %s version %s (%s, sha256 %s) loaded from %s, labels %s", name, version,
             evaluated.shipped_format, sha256, version_dir, served.labels)
    return {"pushed": out_uri}
