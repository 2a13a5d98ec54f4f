"""`ApprovalDecision`: what became of the approval a run asked for (serving.promotion: approval) — approved,
rejected or timed out, by whom, with which comment, when — and for which served version."""

from __future__ import annotations

from typing import Literal

from tasks.artifacts.base import ArtifactType, Properties

Decision = Literal["approved", "rejected", "timed_out"]


class ApprovalProperties(Properties):
    decision: Decision
    by: str | None  # the person who answered; None when nobody did (timed out)
    comment: str
    at: str  # ISO 8601: when it was answered, or when it timed out
    serving_model_name: str
    version: int
    withdrawn: bool  # the canary was withdrawn (rejected or timed out)
    approval_timeouts: int  # the registered model's count of approvals that timed out, this one included


class ApprovalDecision(ArtifactType[ApprovalProperties]):
    KIND = "ApprovalDecision"
    Properties = ApprovalProperties
