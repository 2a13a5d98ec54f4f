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
from tasks.artifacts.base import Output
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.infra_blessing import InfraBlessing
from tasks.artifacts.optimized import VERSION_FOLDER, OptimizedModel
from tasks.artifacts.pushed import PushedProperties
from tasks.artifacts.registered import RegisteredModel
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.serving_sync import RegistryServing
from tasks.step_config import ServingSections

log = logging.getLogger(__name__)


class DigestMismatch(BadInputError):
    """The folder to ship is not the one evaluate blessed."""


def run(ctx: StepContext, config: ServingSections, *, evaluation: ModelEvaluation, infra_blessing: InfraBlessing,
        registered: RegisteredModel, optimized: OptimizedModel, pushed: Output[PushedProperties]) -> None:
    del infra_blessing  # a gate: read by the step runner
    version, name = registered.properties.version, ctx.served_model_name
    evaluated = evaluation.properties
    # A local copy of the version folder (the artifact may be on object storage); the deployer uploads it when
    # the model base path is on object storage too.
    folder = optimized.local(VERSION_FOLDER)
    sha256 = folder_digest(folder)
    if sha256 != evaluated.artifact_sha256:
        raise DigestMismatch(f"push of {name} v{version} refused: {optimized.version_folder} has digest "
                             f"{sha256[:12]}, evaluate blessed {evaluated.artifact_sha256[:12]}; nothing was changed")
    serving = RegistryServing.of_run(ctx)
    serving.check_server()  # a server that is down fails the push here, before anything is written
    # The gate let an unblessed model through only with a reason: record it with the version.
    forced = None if evaluated.blessed else config.serving.force_push_reason
    if forced:
        serving.client.set_model_version_tag(serving.registered_model, str(version), "kiln.forced_push_reason", forced)
    served = serving.push_canary(version, folder, f"forced: {forced}" if forced else "model- and infra-blessed").sync.after
    target = serving.deployer.target
    pushed.properties = PushedProperties(
        serving_model_name=name, version=version, version_dir=str(serving.deployer.version_dir(name, version)),
        versions=list(served.versions), labels=served.labels, rest_url=target.rest_url,
        grpc_address=target.grpc_address, forced_reason=forced, artifact_sha256=sha256,
        artifact_format=evaluated.shipped_format)
    log.info("push: %s version %s (%s, sha256 %s) loaded from %s, labels %s", name, version,
             evaluated.shipped_format, sha256, pushed.properties.version_dir, served.labels)
