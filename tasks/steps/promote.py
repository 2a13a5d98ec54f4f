"""Promote: the verified canary becomes champion in MLflow and stable on the server.

The registry moves first: `champion` -> the version (the old champion becomes `previous-champion`, the
rollback target; `challenger` is consumed; each move is appended to the alias history), then a serving sync
moves `stable`; a sync that fails puts the aliases back. A run that asks for an approval
(serving.promotion: approval) promotes only what a person approved: the approver and their comment are
the `by` and `why` of the alias history's entries and the run summary's. Without the approval it asked
for (the approve task skipped by hand, or an in-process run, where nobody can answer) nothing moves.
"""

from __future__ import annotations

import logging

from tasks import tracking
from tasks.artifacts.approval import ApprovalDecision
from tasks.artifacts.promotion import Promotion, PromotionProperties
from tasks.artifacts.pushed import PushedModel
from tasks.artifacts.verification import ServingVerification
from tasks.config import PipelineConfig
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.model_registry import describe, promote
from tasks.serving_sync import move_and_sync

log = logging.getLogger(__name__)


class NotApproved(BadInputError):
    """The run asked for an approval and promote has none, or a refusal: nothing is promoted."""


def run(config: PipelineConfig, ctx: StepContext, pushed: str, verification: str,
        approval: str | None = None) -> dict[str, str]:
    from serving.deployer import ServingDeployer

    pushed_props = PushedModel.read(pushed).properties
    verified = ServingVerification.read(verification).properties
    name, version = verified.serving_model_name, verified.served_version
    run_by = f"{ctx.dag_id} run {ctx.run_id}"
    why = f"forced: {pushed_props.forced_reason}" if pushed_props.forced_reason else "blessed and verified"
    by, approved_by = run_by, None
    if approval is not None:
        decided = ApprovalDecision.read(approval).properties
        if decided.decision != "approved" or decided.version != version:
            raise NotApproved(f"{name} v{version} not promoted: its approval says {decided.decision} "
                              f"for v{decided.version}")
        approved_by = decided.by
        by = f"approved by {decided.by} in {run_by}"
        why = f"{why}, approved: {decided.comment}" if decided.comment else f"{why}, approved"
    elif config.serving.promotion == "approval":
        raise NotApproved(f"{name} v{version} not promoted: serving.promotion is approval and nobody approved it")
    client, model_name = tracking.client(ctx), config.registered_model_name
    deployer = ServingDeployer(ctx.require_serving())
    _, synced = move_and_sync(client, model_name, name, deployer, lambda: promote(client, model_name, version, why, by),
                              f"promotion of v{version} failed on the server", by)
    served = synced.after
    describe(client, model_name, _description(config, version, why))
    out_uri = ctx.output_uri("promote", "promotion")
    with Promotion.publish(out_uri) as out:
        out.properties = PromotionProperties(serving_model_name=name, version=version, versions=list(served.versions),
                                             labels=served.labels, mlflow_aliases=synced.aliases, why=why, by=by,
                                             approved_by=approved_by)
    log.info("promote: %s v%s is champion and stable (%s; %s); MLflow %s, labels %s", name, version, why, by,
             synced.aliases, served.labels)
    return {"promotion": out_uri}


def _description(config: PipelineConfig, version: int, why: str) -> str:
    what = config.description or f"kiln pipeline {config.pipeline} ({config.task.type})"
    return f"{what} Champion: v{version} ({why}), served as {config.served_model_name}@stable."
