"""The Airflow UI as a person uses it, on the shared embedded stack: log in, open kiln_digits' trigger
form, see the YAML's values prefilled, change fields (a forced push that asks for an approval), trigger,
approve the verified canary from the run's Required Actions with a comment, and watch the run succeed in
the grid; the approver and the comment are in the MLflow alias history.

Playwright drives Debian's `chromium` (never a browser build of Playwright's own): the `chromium`
fixture installs it through apt when it is missing; where that cannot be done the test is skipped with
the reason, except in CI (CI=true), where it fails. Screenshots of the filled form and of the finished
grid are saved in the test's temp folder and named in the failure report (tests/e2e/conftest.py).

Also here: the params' JSON schemas are enforced by Airflow's REST API, not only by the form.
This module runs after the other end-to-end tests (tests/conftest.py): its run registers a kiln-digits
version, and those tests count the versions from 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from infra.cli.airflow_api import admin_password
from tasks.config import load_config

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
DIGITS_YAML = Path(__file__).resolve().parents[2] / "pipelines" / "digits.yaml"
RUN_TIMEOUT = 600
FORCED = "the browser test asks a person"
COMMENT = "approved in the browser"


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the browser test must run in CI, but {why}")
    pytest.skip(f"browser test skipped: {why}")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, installed with apt-get once per session when it is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("the Python package playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        apt = shutil.which("apt-get")
        if apt is None:
            _unavailable(f"{CHROMIUM} is missing and there is no apt-get to install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in ([apt, "update"], [apt, "install", "-y", "chromium"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                _unavailable(f"{CHROMIUM} is missing and `{' '.join(command[1:])}` failed: {last}")
    if not CHROMIUM.exists():
        _unavailable(f"apt-get installed chromium, but not as {CHROMIUM}")
    return CHROMIUM


@pytest.fixture
def stack(kiln):
    from infra.cli.runner import airflow_client
    from infra.stack.stack import Stack

    stack = Stack.load(kiln.home)
    airflow_client(stack).wait_for_dag("kiln_digits", timeout=180)
    return stack


@pytest.fixture
def rest(stack):
    """An httpx client logged in to the stack's Airflow REST API."""
    token = httpx.post(f"{stack.airflow_url}/auth/token", timeout=30,
                       json={"username": "admin", "password": admin_password(stack.airflow_home)})
    token.raise_for_status()
    with httpx.Client(base_url=f"{stack.airflow_url}/api/v2", timeout=30,
                      headers={"Authorization": f"Bearer {token.json()['access_token']}"}) as client:
        yield client


@pytest.fixture
def shoot(request, tmp_path):
    """`shoot(name, page_or_locator)` saves a screenshot in the test's temp folder and records it on the
    test item, for the failure report."""
    def shoot(name: str, target) -> Path:
        path = tmp_path / f"{name}.png"
        target.screenshot(path=str(path))
        request.node.user_properties.append(("screenshot", str(path)))
        return path

    return shoot


@pytest.mark.parametrize("conf, refused", [
    ({"epochs": -1}, "epochs: -1 is less than the minimum of 1"),
    ({"learning_rate": 1}, "learning_rate: 1 is greater than or equal to the maximum of 1"),
    ({"variants": ["int4"]}, "'int4' is not one of"),
    ({"thresholds": {"accuracy": "high"}}, "'high' is not of type 'number'"),
    ({"epochs": None}, "None is not of type 'integer'"),
])
def test_the_rest_api_refuses_a_param_outside_its_schema(rest, conf, refused) -> None:
    before = rest.get("/dags/kiln_digits/dagRuns").json()["total_entries"]
    answer = rest.post("/dags/kiln_digits/dagRuns", json={"logical_date": None, "conf": conf})
    assert answer.status_code == 400, answer.text
    assert refused in answer.json()["detail"]
    assert rest.get("/dags/kiln_digits/dagRuns").json()["total_entries"] == before, "no run was created"


@pytest.mark.timeout(RUN_TIMEOUT + 1200)  # apt-get on a machine without chromium, then the run itself
def test_a_person_triggers_digits_from_the_form_and_sees_it_succeed(
        chromium, stack, rest, shoot, tiny_digits_csv) -> None:
    from playwright.sync_api import expect, sync_playwright

    from tasks.artifacts.run import RunSnapshot
    from tasks.snapshot import run_config

    yaml = load_config(DIGITS_YAML, expand_env=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.set_default_timeout(30_000)
        try:
            page.goto(stack.airflow_url)
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(admin_password(stack.airflow_home))
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/login" not in url)

            page.goto(f"{stack.airflow_url}/dags/kiln_digits")
            page.get_by_role("button", name="Trigger Dag").click()
            form = page.get_by_role("dialog")
            for section in ("Ingest", "Train", "Optimize", "Evaluate", "Push", "Approve"):
                assert form.get_by_role("button", name=section, exact=True).is_visible(), section

            form.get_by_role("button", name="Ingest", exact=True).click()
            source = form.get_by_role("region", name="Ingest").get_by_role("textbox")
            assert source.input_value() == yaml.data.source == "${KILN_HOME}/data/digits.csv"
            source.fill(str(tiny_digits_csv))

            form.get_by_role("button", name="Optimize", exact=True).click()
            # The section's multi-select of variants (serving_format, a select beside it, can be cleared too).
            form.get_by_role("region", name="Optimize").locator("#element_variants") \
                .get_by_label("Clear selected options").click()

            form.get_by_role("button", name="Train", exact=True).click()
            epochs = form.get_by_role("spinbutton", name="Epochs", exact=True)
            assert epochs.input_value() == str(yaml.train.epochs) == "12"
            trigger = form.get_by_role("button", name="Trigger", exact=True)
            epochs.fill("-1")
            epochs.blur()
            assert epochs.input_value() == "1", "the form keeps epochs within the field's bounds"
            epochs.fill("")
            epochs.blur()
            assert trigger.is_disabled(), "a required field left empty cannot be triggered"
            epochs.fill("2")
            epochs.blur()
            assert trigger.is_enabled()

            # Two epochs on 400 rows do not reach the YAML's thresholds: push it anyway, and ask a person.
            form.get_by_role("button", name="Push", exact=True).click()
            form.get_by_role("region", name="Push").get_by_role("textbox").fill(FORCED)
            form.get_by_role("button", name="Approve", exact=True).click()
            form.get_by_role("region", name="Approve").get_by_role("combobox").click()
            page.get_by_role("option", name="approval", exact=True).click()
            shoot("form", form)

            trigger.click()
            page.wait_for_url("**/dags/kiln_digits/runs/*")
            run_id = unquote(page.url.rstrip("/").rsplit("/", 1)[1])
            state = page.get_by_test_id("header-card").get_by_test_id("state-badge")
            required = page.get_by_role("button", name="Required Actions")
            deadline = time.monotonic() + RUN_TIMEOUT
            approved = False
            while (shown := state.inner_text().strip().lower()) not in ("success", "failed"):
                assert time.monotonic() < deadline, f"run {run_id} still {shown!r} after {RUN_TIMEOUT}s"
                if not approved and required.is_visible():
                    approve_in_required_actions(page, shoot)
                    approved = True
                page.wait_for_timeout(10_000)
                page.reload()
            assert approved, f"run {run_id} ended {shown} without asking for an approval"
            expect(page.get_by_test_id(f"grid-{run_id}-train")).to_be_attached()  # the run's column in the grid
            train = page.get_by_role("row").filter(has=page.get_by_role("link", name="train", exact=True))
            expect(train).to_contain_text("Success" if shown == "success" else "")
            shoot("finished-grid", page)
            assert shown == "success", f"run {run_id} ended {shown}"
        except BaseException:
            try:
                shoot("at-failure", page)
            except Exception as exc:  # the page may be gone; the original error matters
                print(f"no screenshot at the failure: {exc}")
            raise
        finally:
            browser.close()

    run = rest.get(f"/dags/kiln_digits/dagRuns/{run_id}").json()
    assert run["state"] == "success" and run["triggered_by"] == "ui"
    assert (run["conf"]["data_source"], run["conf"]["epochs"]) == (str(tiny_digits_csv), 2)
    snapshot = rest.get(f"/dags/kiln_digits/dagRuns/{run_id}/taskInstances/resolve/xcomEntries/return_value")
    resolved = RunSnapshot.read(snapshot.json()["value"])
    assert resolved.properties.overrides == {"data_source": str(tiny_digits_csv), "epochs": 2, "variants": [],
                                             "force_push_reason": FORCED, "promotion": "approval"}, \
        "what the person changed, and nothing the form merely showed"
    config = run_config(resolved)
    assert (config.train.epochs, config.data.source, config.optimize.variants) == (2, str(tiny_digits_csv), [])
    assert config.train.learning_rate == yaml.train.learning_rate

    states = {ti["task_id"]: ti["state"] for ti in
              rest.get(f"/dags/kiln_digits/dagRuns/{run_id}/taskInstances").json()["task_instances"]}
    assert (states["approve"], states["promote"]) == ("success", "success")
    answer = rest.get(f"/dags/kiln_digits/dagRuns/{run_id}/taskInstances/approve/-1/hitlDetails").json()
    assert (answer["chosen_options"], answer["responded_by_user"]["name"]) == (["Approve"], "admin")
    assert answer["params_input"] == {"comment": COMMENT}
    from mlflow import MlflowClient

    from tasks.model_registry import history

    champion = [m for m in history(MlflowClient(stack.mlflow_url), "kiln-digits") if m["alias"] == "champion"][-1]
    assert champion["by"] == f"approved by admin in kiln_digits run {run_id}"
    assert champion["why"] == f"forced: {FORCED}, approved: {COMMENT}"


def approve_in_required_actions(page, shoot) -> None:
    """The run's Required Actions: the question (blessing table, the champion's comparison), a comment, Approve."""
    from playwright.sync_api import expect

    page.get_by_role("button", name="Required Actions").click()
    actions = page.get_by_role("dialog", name="Required Actions")
    expect(actions.get_by_text("Promote digits v", exact=False)).to_be_visible()
    expect(actions.get_by_role("heading", name=f"Blessing: NOT blessed, pushed anyway ({FORCED})",
                               exact=False)).to_be_visible()
    expect(actions.get_by_role("heading", name="Against the champion", exact=False)).to_be_visible()
    actions.get_by_role("textbox").fill(COMMENT)  # the form's one field: the comment
    shoot("required-action", actions)
    actions.get_by_role("button", name="Approve", exact=True).click()
    expect(actions.get_by_text("Pending required actions (0)")).to_be_visible()
    page.keyboard.press("Escape")
