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

from tasks.artifacts.approval import ApprovalDecision
from tasks.artifacts.base import Output
from tasks.artifacts.promotion import PromotionProperties
from tasks.artifacts.pushed import PushedModel
from tasks.artifacts.verification import ServingVerification
from tasks.context import StepContext
from tasks.errors import BadInputError
from tasks.model_registry import describe
from tasks.serving_sync import RegistryServing
from tasks.step_config import ServingSections

log = logging.getLogger(__name__)


class NotApproved(BadInputError):
    """The run asked for an approval and promote has none, or a refusal: nothing is promoted."""


def run(ctx: StepContext, config: ServingSections, *, pushed: PushedModel, verification: ServingVerification,
        approval: ApprovalDecision | None, promotion: Output[PromotionProperties]) -> None:
    verified = verification.properties
    name, version = verified.serving_model_name, verified.served_version
    forced = pushed.properties.forced_reason
    why = f"forced: {forced}" if forced else "blessed and verified"
    approved_by = None
    if approval is not None:
        decided = approval.properties
        if decided.decision != "approved" or decided.version != version:
            raise NotApproved(f"{name} v{version} not promoted: its approval says {decided.decision} "
                              f"for v{decided.version}")
        approved_by = decided.by
        why = f"{why}, approved: {decided.comment}" if decided.comment else f"{why}, approved"
    elif config.serving.promotion == "approval":
        raise NotApproved(f"{name} v{version} not promoted: serving.promotion is approval and nobody approved it")
    serving = RegistryServing.of_run(ctx, approved_by)
    synced = serving.promote(version, why).sync
    served = synced.after
    describe(serving.client, serving.registered_model, _description(ctx, version, why))
    promotion.properties = PromotionProperties(
        serving_model_name=name, version=version, versions=list(served.versions), labels=served.labels,
        mlflow_aliases=synced.aliases, why=why, by=serving.by, approved_by=approved_by)
    log.info("promote: %s v%s is champion and stable (%s; %s); MLflow %s, labels %s", name, version, why,
             serving.by, synced.aliases, served.labels)


def _description(ctx: StepContext, version: int, why: str) -> str:
    what = ctx.description or f"kiln pipeline {ctx.pipeline} ({ctx.task_type})"
    return f"{what} Champion: v{version} ({why}), served as {ctx.served_model_name}@stable."
