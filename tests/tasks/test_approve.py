"""The approval gate's decisions, TFX style: a canary (v2) served beside the champion (v1) by a live
kiln-model-server, stand-in versions in a SQLite MLflow, the artifacts push and verify leave behind built
here; then each answer a person (or nobody) can give, one test each. The question a person reads is a
plain function of the evaluation: tested on its own at the end. The Airflow side (waiting, the UI, the REST
API, `kiln approve`) is in tests/e2e."""

from __future__ import annotations

import uuid

import pytest
from mlflow import MlflowClient

from serving.deployer import ServingDeployer
from tasks.artifacts.approval import ApprovalDecision
from tasks.artifacts.base import Output
from tasks.artifacts.evaluation import Check, EvaluationProperties
from tasks.artifacts.promotion import Promotion
from tasks.artifacts.pushed import PushedModel, PushedProperties
from tasks.artifacts.run import RunSnapshot
from tasks.artifacts.verification import ServingVerification, VerificationProperties
from tasks.context import ServingEndpoints
from tasks.model_registry import APPROVAL_TIMEOUTS_TAG, CHALLENGER, CHAMPION, PREVIOUS, aliases, history
from tasks.serving_sync import sync
from tasks.snapshot import run_config, run_context
from tasks.step_config import ServingSections
from tasks.step_runner import recorded_outputs
from tasks.steps import approve, promote
from tests.registry import register_stand_ins
from tests.tasks.conftest import digits_pipeline, resolve

ANSWERED_AT = "2026-11-30T10:00:00+00:00"


def test_auto_promotion_asks_nobody(tmp_path, tiny_digits_csv) -> None:
    snapshot = RunSnapshot.read(resolve(digits_pipeline(tmp_path, tiny_digits_csv), tmp_path))
    config = run_config(snapshot)
    assert config.serving.promotion == "auto", "the default"
    assert approve.question(run_context(snapshot, step="approve"), ServingSections.of(config), evaluation=None,
                            optimized=None, pushed=None, verification=None) is None


@pytest.fixture
def canary(tmp_path, mlflow_store, model_server, tiny_digits_csv) -> dict:
    """v1 champion (stable), v2 challenger (canary), a run asking for an approval, and push's and verify's
    artifacts for v2."""
    name = f"approve-{uuid.uuid4().hex[:8]}"
    register_stand_ins(mlflow_store, name, tmp_path / "models", (1, 2))
    client = MlflowClient(mlflow_store)
    client.set_registered_model_alias(name, CHAMPION, "1")
    client.set_registered_model_alias(name, CHALLENGER, "2")
    deployer = ServingDeployer(model_server)
    assert sync(client, name, "digits", deployer).after.labels == {"stable": 1, "canary": 2}
    endpoints = ServingEndpoints(rest_url=model_server.rest_url, grpc_address=model_server.grpc_address,
                                 model_base_path=str(model_server.model_base_path),
                                 config_file=str(model_server.config_file))
    run = resolve(digits_pipeline(tmp_path, tiny_digits_csv, registry={"model_name": name}), tmp_path, mlflow_store,
                  endpoints, params={"promotion": "approval", "promotion_timeout_minutes": 30})
    snapshot = RunSnapshot.read(run)
    config, ctx = run_config(snapshot), run_context(snapshot)
    pushed, verification = f"{ctx.step_folder('push')}/pushed", f"{ctx.step_folder('verify')}/verification"
    with PushedModel.publish(pushed) as out:
        out.properties = PushedProperties(serving_model_name="digits", version=2, version_dir="", versions=[1, 2],
                                          labels={"stable": 1, "canary": 2}, rest_url=model_server.rest_url,
                                          grpc_address=model_server.grpc_address, artifact_sha256="ab" * 32,
                                          artifact_format="saved_model")
    with ServingVerification.publish(verification) as out:
        out.properties = VerificationProperties(serving_model_name="digits", served_version=2, versions=[1, 2],
                                                labels={"stable": 1, "canary": 2}, examples=32,
                                                max_relative_diff=0.0, batch_latency_ms=1.0,
                                                artifact_sha256="ab" * 32)
    return {"name": name, "client": client, "deployer": deployer, "config": config, "ctx": ctx, "pushed": pushed,
            "verification": verification, "run": run}


def answer(canary: dict, decision: str, by: str | None, comment: str = "") -> str:
    """The approve step's record of an answer (what the Airflow task hands it once someone, or nobody, answered)."""
    ctx = canary["ctx"].for_step("approve")
    out = Output(ApprovalDecision, ctx.output_uri("approval"))
    approve.run(ctx, ServingSections.of(canary["config"]), evaluation=None, optimized=None,
                pushed=PushedModel.read(canary["pushed"]), verification=None, approval=out, decision=decision, by=by,
                comment=comment, at=ANSWERED_AT)
    out.publish()
    return out.uri


def promote_with(canary: dict, approval: str | None) -> None:
    ctx = canary["ctx"].for_step("promote")
    out = Output(Promotion, ctx.output_uri("promotion"))
    promote.run(ctx, ServingSections.of(canary["config"]), pushed=PushedModel.read(canary["pushed"]),
                verification=ServingVerification.read(canary["verification"]),
                approval=ApprovalDecision.read(approval) if approval else None, promotion=out)
    out.publish()


def served(canary: dict) -> tuple[tuple[int, ...], dict[str, int]]:
    now = canary["deployer"].served("digits")
    return now.versions, now.labels


@pytest.mark.slow
def test_an_approved_canary_is_promoted_with_the_approver_and_comment_in_the_alias_history(canary) -> None:
    decided = ApprovalDecision.read(answer(canary, "approved", "alice", "ticket 7: looks right"))
    assert (decided.properties.decision, decided.properties.withdrawn) == ("approved", False)
    assert aliases(canary["client"], canary["name"]) == {CHAMPION: 1, CHALLENGER: 2}, "approve moves nothing itself"

    promote_with(canary, decided.uri)
    assert aliases(canary["client"], canary["name"]) == {CHAMPION: 2, PREVIOUS: 1}
    assert served(canary) == ((1, 2), {"stable": 2})
    moves = history(canary["client"], canary["name"])
    champion = next(m for m in reversed(moves) if m["alias"] == CHAMPION)
    assert champion["to_version"] == 2 and champion["why"] == "blessed and verified, approved: ticket 7: looks right"
    assert champion["by"] == f"approved by alice in kiln_digits run {canary['ctx'].run_id}"


@pytest.mark.slow
def test_a_rejected_canary_is_withdrawn_and_stable_is_untouched(canary) -> None:
    decided = ApprovalDecision.read(answer(canary, "rejected", "bob", "latency looks off")).properties
    assert (decided.decision, decided.by, decided.withdrawn, decided.approval_timeouts) == ("rejected", "bob", True, 0)
    assert aliases(canary["client"], canary["name"]) == {CHAMPION: 1}
    assert served(canary) == ((1,), {"stable": 1})
    last = history(canary["client"], canary["name"])[-1]
    assert (last["alias"], last["from_version"], last["to_version"]) == (CHALLENGER, 2, None)
    assert last["why"] == "v2 rejected by bob: latency looks off"
    assert APPROVAL_TIMEOUTS_TAG not in canary["client"].get_registered_model(canary["name"]).tags, "not a timeout"


@pytest.mark.slow
def test_an_answer_once_recorded_is_what_a_retried_approval_finds(canary) -> None:
    """Airflow may retry an approval task after its answer was recorded (and acted on): the retry must find it
    instead of asking again."""
    assert recorded_outputs("approve", canary["run"]) is None, "nothing recorded: ask"
    uri = answer(canary, "rejected", "bob", "not now")
    assert recorded_outputs("approve", canary["run"]) == {"approval": uri}


@pytest.mark.slow
def test_a_timed_out_approval_withdraws_the_canary_and_is_counted(canary) -> None:
    decided = ApprovalDecision.read(answer(canary, "timed_out", None)).properties
    assert (decided.decision, decided.by, decided.withdrawn, decided.approval_timeouts) == ("timed_out", None, True, 1)
    assert canary["client"].get_registered_model(canary["name"]).tags[APPROVAL_TIMEOUTS_TAG] == "1"
    assert aliases(canary["client"], canary["name"]) == {CHAMPION: 1}
    assert served(canary) == ((1,), {"stable": 1})
    assert history(canary["client"], canary["name"])[-1]["why"] == "v2: nobody approved it within 30 minutes"
    answer(canary, "timed_out", None)  # the next run's approval times out too
    assert canary["client"].get_registered_model(canary["name"]).tags[APPROVAL_TIMEOUTS_TAG] == "2"


@pytest.mark.slow
@pytest.mark.parametrize("decision", ["rejected", "timed_out"])
def test_promote_refuses_an_approval_that_was_not_given(canary, decision) -> None:
    refused = answer(canary, decision, "bob" if decision == "rejected" else None)
    before = aliases(canary["client"], canary["name"])
    with pytest.raises(promote.NotApproved, match=rf"^digits v2 not promoted: its approval says {decision} for v2$"):
        promote_with(canary, refused)
    assert aliases(canary["client"], canary["name"]) == before


@pytest.mark.slow
def test_promote_refuses_a_run_that_asked_for_an_approval_and_got_none(canary) -> None:
    """The approve task skipped by hand, or the in-process runner, where nobody can answer: nothing moves."""
    with pytest.raises(promote.NotApproved, match="serving.promotion is approval and nobody approved it"):
        promote_with(canary, None)
    assert aliases(canary["client"], canary["name"]) == {CHAMPION: 1, CHALLENGER: 2}
    assert served(canary) == ((1, 2), {"stable": 1, "canary": 2})


# --- what a person is asked ----------------------------------------------------------------------


EVALUATED = EvaluationProperties(
    task="classification", metrics={"accuracy": 0.9812, "f1": 0.97}, num_examples=360,
    artifact_sha256="c0ffee" * 10 + "abcd", shipped_variant="int8", shipped_format="tflite",
    champion_version=4, champion_metrics={"accuracy": 0.9771, "f1": 0.9731},
    checks=[Check(name="accuracy >= 0.95", metric="accuracy", value=0.9812, threshold=0.95, passed=True, reason=""),
            Check(name="accuracy vs champion", metric="accuracy", value=0.9812, threshold=0.9721, passed=True,
                  reason="")],
    blessed=True)
PUSHED = PushedProperties(serving_model_name="digits", version=5, version_dir="", versions=[4, 5],
                          labels={"stable": 4, "canary": 5}, rest_url="", grpc_address="",
                          artifact_sha256=EVALUATED.artifact_sha256, artifact_format="tflite")
VERIFIED = VerificationProperties(serving_model_name="digits", served_version=5, versions=[4, 5],
                                  labels={"stable": 4, "canary": 5}, examples=32, max_relative_diff=2.5e-7,
                                  batch_latency_ms=3.0, artifact_sha256=EVALUATED.artifact_sha256)
CANDIDATE = approve.Shipped(5, "int8", "tflite", EVALUATED.artifact_sha256, 55_000)
CHAMPION_V4 = approve.Shipped(4, "dynamic_range", "tflite", "beef" * 16, 110_000)


def body(evaluated=EVALUATED, champion=CHAMPION_V4, pushed=PUSHED) -> list[str]:
    return approve.approval_body("digits", "kiln__run", evaluated, CANDIDATE, champion, VERIFIED, pushed, 1440)\
        .splitlines()


def test_the_body_shows_every_blessing_check_with_its_value_and_threshold() -> None:
    lines = body()
    assert "### Blessing: blessed (2 of 2 checks passed)" in lines
    assert "| accuracy >= 0.95 | 0.9812 | 0.9500 | pass |" in lines
    assert "| accuracy vs champion | 0.9812 | 0.9721 | pass |" in lines


def test_the_body_compares_the_candidate_with_the_champion_as_served() -> None:
    lines = body()
    assert "### Against the champion (v4)" in lines
    assert "| | candidate v5 | champion v4 | change |" in lines
    assert "| accuracy | 0.9812 | 0.9771 | +0.0041 |" in lines and "| f1 | 0.9700 | 0.9731 | -0.0031 |" in lines
    assert "| variant | int8 | dynamic_range | |" in lines and "| format | tflite | tflite | |" in lines
    assert "| size | 55,000 B | 110,000 B | 0.50x |" in lines
    assert "| sha256 | `c0ffeec0ffee` | `beefbeefbeef` | |" in lines
    assert any("v4 stays loaded as previous-champion" in line for line in lines)


def test_the_body_says_how_to_answer_and_what_a_timeout_does() -> None:
    text = "\n".join(body())
    assert "no answer within 1440 minutes: the canary is withdrawn" in text
    assert "`kiln approve digits kiln__run --comment '...'`" in text and "`kiln reject digits kiln__run" in text


def test_the_body_of_a_first_version_has_no_champion_to_compare_with() -> None:
    first = EVALUATED.model_copy(update={"champion_version": None, "champion_metrics": None})
    lines = body(first, champion=None)
    assert "There is no champion yet: v5 would be the first." in lines
    assert not any(line.startswith("| accuracy | ") for line in lines)


def test_the_body_of_an_older_champion_says_what_it_does_not_know() -> None:
    """A champion registered before its size was tagged: unknown, not a made-up number."""
    lines = body(champion=approve.Shipped(4, None, None, None, None))
    assert "| size | 55,000 B | unknown | |" in lines and "| sha256 | `c0ffeec0ffee` | `unknown` | |" in lines


def test_the_body_of_a_forced_push_says_it_is_not_blessed() -> None:
    failing = EVALUATED.model_copy(update={"blessed": False, "checks": [
        Check(name="accuracy >= 0.99", metric="accuracy", value=0.9812, threshold=0.99, passed=False, reason="low")]})
    lines = body(failing, pushed=PUSHED.model_copy(update={"forced_reason": "hotfix 42"}))
    assert "### Blessing: NOT blessed, pushed anyway (hotfix 42) (0 of 1 checks passed)" in lines
    assert "| accuracy >= 0.99 | 0.9812 | 0.9900 | FAIL |" in lines
