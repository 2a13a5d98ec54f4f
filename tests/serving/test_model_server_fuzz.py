"""Hypothesis fuzzing of the REST front end: malformed paths and bodies always get a JSON 4xx (or a
correct 200), never a 5xx or a dropped connection; outside /v1 only the documented HTML 404; and the
server keeps answering afterwards."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

MODELS = ["half_plus_two", "default", "two_inputs", "missing"]
SUFFIXES = [
    "",
    "/versions/123",
    "/versions/9",
    "/labels/Version_Label",
    "/labels/x",
    "/metadata",
    "/versions/x",
]
VERBS = [":predict", ":classify", ":regress", ":PREDICT", "", "/metadata"]
PATH_CHARS = st.sampled_from(list("abcXYZ019_-.~:/?=&%+!$'()*,;@"))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_bodies = st.one_of(
    json_values.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "instances": json_values,
            "inputs": json_values,
            "signature_name": json_values,
            "examples": json_values,
            "context": json_values,
        },
    ).map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=64),
)
structured_paths = st.builds(
    lambda model, suffix, verb: f"/v1/models/{model}{suffix}{verb}",
    st.sampled_from(MODELS),
    st.sampled_from(SUFFIXES),
    st.sampled_from(VERBS),
)
random_paths = st.builds(lambda prefix, tail: prefix + tail, st.sampled_from(["/v1/", "/V1/models/", "/", "/v2/"]),
                         st.text(PATH_CHARS, max_size=40))  # fmt: skip


@pytest.fixture(scope="module")
def rest(standard_server):
    with httpx.Client(base_url=standard_server.server.rest_url, timeout=30) as client:
        yield client


def check_answer(response: httpx.Response, path: str) -> None:
    if not path.lower().startswith("/v1/") and response.status_code == 404:
        assert response.headers["content-type"] == "text/html"
        return
    assert response.headers["content-type"] == "application/json", response.text
    if response.status_code == 200:
        json.loads(response.content)
        return
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert set(response.json()) == {"error"}


def test_malformed_requests_always_get_a_json_4xx_and_the_server_still_answers(rest):
    @settings(max_examples=150, deadline=None)
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]), path=structured_paths | random_paths,
           body=json_bodies)  # fmt: skip
    def fuzz(method, path, body):
        response = rest.request(method, path, content=body)
        check_answer(response, response.request.url.raw_path.decode("latin-1"))

    fuzz()
    # In the same test, not a test after it: the check must not depend on the order tests run in.
    assert rest.post("/v1/models/default:predict", json={"instances": [2.0]}).json() == {"predictions": [3.0]}
