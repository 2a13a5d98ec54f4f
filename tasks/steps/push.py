"""Push: ship the registered model to TF Serving as version N (= MLflow version N), labelled canary.

Gated twice (the step runner skips it otherwise): the model blessing (unless the run was triggered with
`force_push_reason`, which is then recorded on the MLflow version and in the alias history) and the
infra blessing (the candidate loaded and answered in a sandbox). The version folder is
`tasks.serving_bundle`'s: the SavedModel optimize chose, its TFLite file and warmup requests. The
previous champion stays loaded beside the new canary: the rollback target.
"""

from __future__ import annotations

import logging

from tasks import tracking
from tasks.artifacts.evaluation import ModelEvaluation
from tasks.artifacts.examples import Examples
from tasks.artifacts.model import Model
from tasks.artifacts.optimized import OptimizedModel
from tasks.artifacts.pushed import PushedModel, PushedProperties
from tasks.artifacts.registered import RegisteredModel
from tasks.config import PipelineConfig
from tasks.context import StepContext
from tasks.model_registry import PREVIOUS, aliases
from tasks.serving_bundle import version_bundle

log = logging.getLogger(__name__)


def run(config: PipelineConfig, ctx: StepContext, evaluation: str, infra_blessing: str, registered: str, model: str,
        optimized: str, examples: str) -> dict[str, str]:
    from serving.deployer import ServingDeployer

    registration = RegisteredModel.read(registered).properties
    version = registration.version
    client = tracking.client(ctx)
    # The gate let an unblessed model through only with a reason: record it with the version.
    forced = None if ModelEvaluation.read(evaluation).properties.blessed else config.serving.force_push_reason
    if forced:
        client.set_model_version_tag(registration.model_name, str(version), "kiln.forced_push_reason", forced)
    compressed = OptimizedModel.read(optimized)
    name = config.served_model_name
    target = ctx.require_serving()
    deployer = ServingDeployer(target)
    deployer.served(name)  # a server that is down fails the push here, before anything is written
    with version_bundle(Model.read(model), compressed, Examples.read(examples), name) as (saved_model, extras):
        version_dir = deployer.stage_version(name, version, saved_model, extras)
    rollback_target = aliases(client, registration.model_name).get(PREVIOUS)
    keep = [rollback_target] if rollback_target and deployer.is_staged(name, rollback_target) else []
    served = deployer.push_version(name, version, keep=keep)
    out_uri = ctx.output_uri("push", "pushed")
    with PushedModel.publish(out_uri) as out:
        out.properties = PushedProperties(serving_model_name=name, version=version, version_dir=str(version_dir),
                                          versions=list(served.versions), labels=served.labels,
                                          rest_url=target.rest_url, grpc_address=target.grpc_address,
                                          forced_reason=forced, saved_model=str(saved_model),
                                          variant=compressed.properties.selected)
    log.info("push: %s version %s loaded from %s, labels %s", name, version, version_dir, served.labels)
    return {"pushed": out_uri}
