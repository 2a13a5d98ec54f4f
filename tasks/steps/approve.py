"""Approve: a person decides whether the verified canary becomes champion (serving.promotion: approval).

Two halves around a wait that is Airflow's (a Human-in-the-loop task: it holds no worker slot while it waits):

* `question` — before the wait: the subject and the Markdown body the person decides on: the blessing
  checks with their values and thresholds, the candidate against the champion (metrics on the same eval
  rows, and what ships: variant, format, size, digest), what verify saw, and how to answer. None when the
  run promotes without asking (promotion: auto): then nobody is asked.
* `run` — after the answer: it is recorded as an `ApprovalDecision`. Approved: promote moves the aliases,
  with the approver and comment. Rejected, or timed out (nobody answered within
  serving.promotion_timeout_minutes): the canary is withdrawn — `challenger` removed with the reason in the
  alias history, then a sync unloads it; champion and stable are not touched — and a timeout is counted
  on the registered model (`kiln.approval_timeouts`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks import tracking
from tasks.artifacts.approval import ApprovalProperties, Decision
from tasks.artifacts.base import Output
from tasks.artifacts.evaluation import EvaluationProperties, ModelEvaluation
from tasks.artifacts.optimized import OptimizedModel
from tasks.artifacts.pushed import PushedModel, PushedProperties
from tasks.artifacts.verification import ServingVerification, VerificationProperties
from tasks.context import StepContext
from tasks.model_registry import approval_timeouts, count_approval_timeout
from tasks.serving_sync import RegistryServing
from tasks.step_config import ServingSections

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# The MLflow version tags register writes, read back for the champion's side of the comparison.
SHIPPED_TAGS = {"variant": "kiln.optimized_variant", "format": "kiln.served_format", "sha256": "kiln.artifact_sha256",
                "bytes": "kiln.shipped_bytes"}


@dataclass(frozen=True)
class Question:
    subject: str
    body: str  # Markdown
    timeout_minutes: float


@dataclass(frozen=True)
class Shipped:
    """What a version ships, as far as it is known (an older version may lack a tag: None)."""

    version: int
    variant: str | None
    format: str | None
    sha256: str | None
    bytes: int | None


def question(ctx: StepContext, config: ServingSections, *, evaluation: ModelEvaluation, optimized: OptimizedModel,
             pushed: PushedModel, verification: ServingVerification) -> Question | None:
    if config.serving.promotion == "auto":
        return None
    evaluated = evaluation.properties
    pushed_props = pushed.properties
    shipped = optimized.properties.shipped
    candidate = Shipped(pushed_props.version, shipped.variant, shipped.format, evaluated.artifact_sha256,
                        shipped.bytes)
    champion = None
    if evaluated.champion_version is not None:
        champion = champion_shipped(tracking.client(ctx), ctx.registered_model_name, evaluated.champion_version)
    return Question(
        subject=f"Promote {pushed_props.serving_model_name} v{pushed_props.version} to stable?",
        body=approval_body(ctx.pipeline, ctx.run_id, evaluated, candidate, champion, verification.properties,
                           pushed_props, config.serving.promotion_timeout_minutes),
        timeout_minutes=config.serving.promotion_timeout_minutes)


def champion_shipped(client: MlflowClient, model: str, version: int) -> Shipped:
    tags = client.get_model_version(model, str(version)).tags
    size = tags.get(SHIPPED_TAGS["bytes"])
    return Shipped(version, tags.get(SHIPPED_TAGS["variant"]), tags.get(SHIPPED_TAGS["format"]),
                   tags.get(SHIPPED_TAGS["sha256"]), int(size) if size else None)


def approval_body(pipeline: str, run_id: str, evaluated: EvaluationProperties, candidate: Shipped,
                  champion: Shipped | None, verified: VerificationProperties, pushed: PushedProperties,
                  timeout_minutes: float) -> str:
    """The Markdown a person decides on: blessing table, candidate against champion, verification, how to
    answer."""
    name, version = pushed.serving_model_name, candidate.version
    failed = [c for c in evaluated.checks if not c.passed]
    verdict = "blessed" if evaluated.blessed else f"NOT blessed, pushed anyway ({pushed.forced_reason})"
    lines = [
        f"**{name} v{version}** is loaded as `canary` beside the champion. Verify found it is the folder evaluate "
        f"blessed (sha256 `{verified.artifact_sha256[:12]}`) and that it answers {verified.examples} eval rows "
        f"like that folder run in-process (max relative difference {verified.max_relative_diff:.1e}).",
        "",
        f"### Blessing: {verdict} ({len(evaluated.checks) - len(failed)} of {len(evaluated.checks)} checks passed)",
        "",
        _row("check", "value", "threshold", "result"),
        "|---|---|---|---|",
        *(_row(c.name, _number(c.value), _number(c.threshold), "pass" if c.passed else "FAIL")
          for c in evaluated.checks),
        "",
    ]
    if champion is None:
        lines += ["### Against the champion", "", f"There is no champion yet: v{version} would be the first.", ""]
    else:
        lines += [
            f"### Against the champion (v{champion.version})",
            "",
            f"Both scored as served, on the same {evaluated.num_examples} eval rows.",
            "",
            _row("", f"candidate v{version}", f"champion v{champion.version}", "change"),
            "|---|---|---|---|",
            *(_metric_row(metric, value, (evaluated.champion_metrics or {}).get(metric))
              for metric, value in evaluated.metrics.items()),
            _row("variant", _text(candidate.variant), _text(champion.variant), ""),
            _row("format", _text(candidate.format), _text(champion.format), ""),
            _row("size", _bytes(candidate.bytes), _bytes(champion.bytes), _size_change(candidate, champion)),
            _row("sha256", f"`{_digest(candidate.sha256)}`", f"`{_digest(champion.sha256)}`", ""),
            "",
        ]
    after = f"v{champion.version} stays loaded as previous-champion (the rollback target)" if champion else \
        "nothing served before it"
    lines += [
        f"**Approve**: v{version} becomes champion and is served as `stable`; {after}. "
        f"**Reject**, or no answer within {timeout_minutes:g} minutes: the canary is withdrawn and `stable` "
        "stays as it is. A comment goes into the MLflow alias history with your name.",
        "",
        f"Also from a shell: `kiln approve {pipeline} {run_id} --comment '...'` or `kiln reject {pipeline} "
        f"{run_id} --comment '...'`.",
    ]
    return "\n".join(lines)


def _row(*cells: str) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _text(value: str | None) -> str:
    return value or "unknown"


def _bytes(size: int | None) -> str:
    return "unknown" if size is None else f"{size:,} B"


def _digest(sha256: str | None) -> str:
    return sha256[:12] if sha256 else "unknown"


def _metric_row(metric: str, candidate: float, champion: float | None) -> str:
    return _row(metric, f"{candidate:.4f}", _number(champion), "" if champion is None else f"{candidate - champion:+.4f}")


def _size_change(candidate: Shipped, champion: Shipped) -> str:
    if candidate.bytes is None or not champion.bytes:
        return ""
    return f"{candidate.bytes / champion.bytes:.2f}x"


def run(ctx: StepContext, config: ServingSections, *, evaluation: ModelEvaluation, optimized: OptimizedModel,
        pushed: PushedModel, verification: ServingVerification, approval: Output[ApprovalProperties],
        decision: Decision, by: str | None, comment: str, at: str) -> None:
    """Record the answer; a rejection or a timeout withdraws the canary (a timeout is also counted)."""
    del evaluation, optimized, verification  # the question's inputs
    name, version = pushed.properties.serving_model_name, pushed.properties.version
    serving = RegistryServing.of_run(ctx)
    withdrawn = decision != "approved"
    if withdrawn:
        why = f"v{version} rejected by {by}: {comment or 'no comment'}" if decision == "rejected" else \
            f"v{version}: nobody approved it within {config.serving.promotion_timeout_minutes:g} minutes"
        serving.withdraw(version, why)
    timeouts = count_approval_timeout(serving.client, serving.registered_model) if decision == "timed_out" else \
        approval_timeouts(serving.client, serving.registered_model)
    approval.properties = ApprovalProperties(decision=decision, by=by, comment=comment, at=at,
                                             serving_model_name=name, version=version, withdrawn=withdrawn,
                                             approval_timeouts=timeouts)
    log.info("approve: %s v%s %s%s%s", name, version, decision.replace("_", " "), f" by {by}" if by else "",
             f" ({comment})" if comment else "")

