"""The Airflow client rides out an api-server that restarts (issue 11), against a fake api-server on a
real socket: transport errors and 5xx are retried for a bounded time, saying so once; a 401 after a
restart logs in again; a trigger whose answer was lost creates one run, not two; a 4xx is an answer."""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace

import pytest

from infra.airflow.pipelines import CONFIG_MARK, config_fingerprint
from infra.cli.airflow_api import PASSWORDS_FILE, AirflowApiError, AirflowClient, TaskState, new_run_id
from infra.cli.runner import trigger_and_follow
from tests.infra.fake_airflow import PASSWORD, FakeAirflow

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def fake():
    server = FakeAirflow().start()
    yield server
    server.stop()


def client(fake: FakeAirflow, lines: list[str] | None = None, retry_for: float = 10) -> AirflowClient:
    report = lines.append if lines is not None else None
    return AirflowClient(fake.url, "admin", PASSWORD, timeout=5, retry_for=retry_for, report=report)


def waiting(lines: list[str]) -> list[str]:
    return [line for line in lines if "not answering" in line]


def test_a_run_is_followed_through_an_api_server_restart(fake, tmp_path, monkeypatch):
    """kill -9 of the api-server mid-follow, back (with a new signing key) once the client said it waits: the same
    run is followed to its real outcome, the wait is announced once, the stale token is replaced."""
    config_path = tmp_path / "fake.yaml"
    config_path.write_text("pipeline: fake\n")
    fake.doc_md = f"{CONFIG_MARK} {config_path} sha256={config_fingerprint(config_path)}"
    fake.script = [{"train": ("queued", 1)}, {"train": ("running", 1)}, {"train": ("running", 1)},
                   {"train": ("failed", 1)}, {"train": ("up_for_retry", 1)}, {"train": ("running", 2)},
                   {"train": ("success", 2)}]
    (tmp_path / PASSWORDS_FILE).write_text(f'{{"admin": "{PASSWORD}"}}')
    stack = SimpleNamespace(airflow_url=fake.url, airflow_home=tmp_path)
    monkeypatch.delenv("KILN_RETRY_SECONDS", raising=False)  # the default: 120 s

    noticed = threading.Event()  # the client said it is waiting: only then does the server come back

    def report(line: str) -> None:
        lines.append(line)
        if "not answering" in line:
            noticed.set()

    def outage() -> None:
        while fake.asked["GET /api/v2/dags/kiln_fake/dagRuns/{id}/taskInstances"] < 2:
            time.sleep(0.01)
        fake.stop()
        noticed.wait(timeout=60)
        time.sleep(0.5)  # a few more refused polls while it is down
        fake.start()

    seen: list[TaskState] = []
    lines: list[str] = []
    restarter = threading.Thread(target=outage)
    restarter.start()
    api, run_id = trigger_and_follow(stack, fake_config(), config_path, {"epochs": 1},
                                     seen.append, report=report, poll=0.05)
    restarter.join()
    api.close()
    assert noticed.is_set()
    assert list(fake.runs) == [run_id] and fake.runs[run_id]["state"] == "success"
    assert fake.runs[run_id]["conf"] == {"epochs": 1}
    assert [(t.state, t.try_number) for t in seen] == [("queued", 1), ("running", 1), ("failed", 1),
                                                       ("up_for_retry", 1), ("running", 2), ("success", 2)]
    # Refused while it is down, or cut off mid-request as it stops: either way, said once.
    [said] = waiting(lines)
    assert re.fullmatch(rf"Airflow API at {fake.url} not answering \((ConnectError|ReadError|RemoteProtocolError)\), "
                        r"retrying for 120 s", said), said
    assert any(line.startswith(f"Airflow API at {fake.url} answering again after ") for line in lines)
    assert fake.asked["POST /auth/token"] == 2  # the restarted server rejected the old token: one new login


def fake_config(promotion: str = "auto") -> SimpleNamespace:
    return SimpleNamespace(pipeline="fake", serving=SimpleNamespace(promotion=promotion, promotion_timeout_minutes=1))


def test_a_run_waiting_for_an_approval_says_how_to_answer_it_once(fake, tmp_path):
    config_path = tmp_path / "fake.yaml"
    config_path.write_text("pipeline: fake\n")
    fake.doc_md = f"{CONFIG_MARK} {config_path} sha256={config_fingerprint(config_path)}"
    fake.script = [{"approve": ("running", 1)}, {"approve": ("awaiting_input", 1)}, {"approve": ("awaiting_input", 1)},
                   {"approve": ("scheduled", 1)}, {"approve": ("success", 1)}]
    (tmp_path / PASSWORDS_FILE).write_text(f'{{"admin": "{PASSWORD}"}}')
    stack = SimpleNamespace(airflow_url=fake.url, airflow_home=tmp_path)
    lines: list[str] = []
    api, run_id = trigger_and_follow(stack, fake_config("approval"), config_path, {}, lambda task: None,
                                     report=lines.append, poll=0.05)
    api.close()
    assert [line for line in lines if "awaiting" in line] == [
        f"approve awaiting approval: kiln approve fake {run_id} --comment '...' (or kiln reject), or Required "
        f"Actions in the Airflow UI: {fake.url}/dags/kiln_fake/runs/{run_id}/tasks/approve/required_actions"]


def test_an_outage_longer_than_the_deadline_is_one_line(fake):
    api = client(fake, retry_for=1.5)
    fake.stop()
    started = time.monotonic()
    with pytest.raises(AirflowApiError) as raised:
        api.dag_run("kiln_fake", "r")
    message = str(raised.value)
    assert 1.5 <= time.monotonic() - started < 5  # retried up to the deadline, not a backoff step short of it
    assert "\n" not in message
    assert message.startswith(f"Airflow API at {fake.url} still failing after ")
    assert "GET /api/v2/dags/kiln_fake/dagRuns/r" in message and "ConnectError" in message


def test_5xx_is_retried_and_said_once(fake):
    lines: list[str] = []
    api = client(fake, lines)
    run_id = api.trigger("kiln_fake", {})
    fake.answer_next = [503, 502, 500]
    assert api.dag_run("kiln_fake", run_id)["state"] == "queued"
    assert waiting(lines) == [f"Airflow API at {fake.url} not answering (HTTP 503), retrying for 10 s"]
    assert fake.asked["GET /api/v2/dags/kiln_fake/dagRuns/{id}"] == 4


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_4xx_is_an_answer_not_retried(fake, status):
    lines: list[str] = []
    api = client(fake, lines)
    fake.answer_next = [status]
    with pytest.raises(AirflowApiError, match=rf"^GET /api/v2/dags/kiln_fake/dagRuns/r: HTTP {status}: "):
        api.dag_run("kiln_fake", "r")
    assert fake.asked["GET /api/v2/dags/kiln_fake/dagRuns/{id}"] == 1
    assert lines == []


def test_a_401_logs_in_again_once(fake):
    api = client(fake)
    run_id = api.trigger("kiln_fake", {})
    fake.key = "rotated"  # the api-server now signs with another key
    assert api.dag_run("kiln_fake", run_id)["dag_run_id"] == run_id
    assert fake.asked["POST /auth/token"] == 2
    fake.answer_next = [401, 401]  # still 401 after a fresh login: an answer
    with pytest.raises(AirflowApiError, match=r"^login as 'admin' at .* failed: HTTP 401"):
        api.dag_run("kiln_fake", run_id)


def test_wrong_credentials_are_not_retried(fake):
    with pytest.raises(AirflowApiError, match=r"^login as 'admin' at .* failed: HTTP 401"):
        AirflowClient(fake.url, "admin", "wrong", retry_for=10)
    assert fake.asked["POST /auth/token"] == 1


def test_login_waits_for_an_api_server_that_is_starting(fake):
    fake.stop()
    threading.Timer(1.0, fake.start).start()
    lines: list[str] = []
    client(fake, lines).dag_details("kiln_fake")
    assert len(waiting(lines)) == 1


def test_a_trigger_whose_answer_was_lost_creates_one_run(fake):
    """The server creates the run and hangs up before answering: the retried POST with the same run id
    gets 409, which is this run, not a second one."""
    api = client(fake)
    fake.drop_after_accept = 1
    run_id = api.trigger("kiln_fake", {"epochs": 2})
    assert list(fake.runs) == [run_id]
    assert fake.asked["POST /api/v2/dags/kiln_fake/dagRuns"] == 2


def test_a_run_id_taken_before_the_first_attempt_is_an_error(fake):
    api = client(fake)
    taken = api.trigger("kiln_fake", {})
    with pytest.raises(AirflowApiError, match="HTTP 409"):
        api.trigger("kiln_fake", {}, run_id=taken)
    assert len(fake.runs) == 1


def test_run_ids_are_what_airflow_accepts():
    import re

    run_id = new_run_id()
    assert re.fullmatch(r"^[A-Za-z0-9_.~:+-]+$", run_id)  # Airflow's default allowed_run_id_pattern
    assert run_id.startswith("kiln__") and run_id != new_run_id()
