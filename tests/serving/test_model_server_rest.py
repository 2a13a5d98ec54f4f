"""kiln-model-server's REST API, black-box over a real port, re-expressing TF Serving's upstream cases
(http_rest_api_handler_test.cc, tensorflow_model_server_test.py)."""

from __future__ import annotations

import gzip
import json

import httpx
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rest(standard_server):
    with httpx.Client(base_url=standard_server.server.rest_url, timeout=30) as client:
        yield client


def error_of(response: httpx.Response) -> str:
    return response.json()["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/foo"),
        ("POST", "/v1/foo"),
        ("POST", "/v1/models"),
        ("GET", "/v1/models/debug/model_name"),
        ("GET", "/v1/models/foo:predict"),
        ("GET", "/v1/models/foo/version/50:predict"),
        ("POST", "/v1/models/foo/version/50:regress"),
        ("POST", "/v1/models/foo/versions/HELLO:regress"),
        ("POST", "/v1/models/foo/metadata"),
        ("POST", "/v1/models/foo/label/some_label:regress"),
        ("POST", "/v1/models/foo/versions/50/labels/some_label:regress"),
        ("POST", "/v1/models/foo/versions/some_label:regress"),
        ("POST", "/v1/models/half_plus_two:PREDICT"),
        ("PUT", "/v1/models/half_plus_two"),
        ("DELETE", "/v1/models/half_plus_two"),
    ],
)
def test_unsupported_api_calls_are_malformed_requests(rest, method, path):
    response = rest.request(method, path, content=b"{}")
    assert response.status_code == 400
    assert error_of(response) == f"Malformed request: {method} {path}"


def test_missing_model_name_and_overflowing_version(rest):
    response = rest.get("/v1/models")
    assert (response.status_code, error_of(response)) == (400, "Missing model name in request.")
    response = rest.get("/v1/models/half_plus_two/versions/18446744073709551615")
    assert response.status_code == 400
    assert error_of(response) == "Failed to convert version: 18446744073709551615 to numeric."


def test_paths_outside_v1_get_the_html_404_page(rest):
    response = rest.get("/v2/models/half_plus_two")
    assert response.status_code == 404
    assert response.headers["content-type"] == "text/html"
    assert b"404 Not Found" in response.content


def test_a_websocket_upgrade_is_an_ordinary_request(rest):
    """TF Serving's REST API has no websockets: the upgrade is not accepted (no 101), the request is answered
    like any other."""
    response = rest.get("/v1/models/half_plus_two", headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert response.status_code == 200 and response.json()["model_version_status"]


def test_query_string_is_part_of_the_model_name(rest):
    response = rest.get("/v1/models/half_plus_two?x=1")
    assert (response.status_code, error_of(response)) == (
        404,
        "Could not find any versions of model half_plus_two?x=1",
    )


def test_unknown_model_and_version_are_404(rest):
    response = rest.post("/v1/models/foo:predict", json={"instances": [1.0]})
    assert (response.status_code, error_of(response)) == (404, "Servable not found for request: Latest(foo)")
    response = rest.post("/v1/models/foo/versions/50:predict", json={"instances": [1.0]})
    assert (response.status_code, error_of(response)) == (
        404,
        "Servable not found for request: Specific(foo, 50)",
    )
    response = rest.get("/v1/models/foo")
    assert (response.status_code, error_of(response)) == (404, "Could not find any versions of model foo")
    response = rest.get("/v1/models/half_plus_two/versions/50")
    assert (response.status_code, error_of(response)) == (
        404,
        "Could not find version 50 of model half_plus_two",
    )


def test_predict_request_errors(rest):
    url = "/v1/models/half_plus_two:predict"
    response = rest.post(url, content=b"")
    assert (response.status_code, error_of(response)) == (400, "JSON Parse error: The document is empty")
    response = rest.post(url, content=b"instances = [1, 2]")
    assert response.status_code == 400 and "JSON Parse error: Invalid value" in error_of(response)
    response = rest.post(url, json={"instances": ["x", "y"]})
    assert response.status_code == 400 and "not of expected type: float" in error_of(response)
    response = rest.post("/v1/models/half_plus_two/labels/nope:predict", json={"instances": [1.0]})
    assert (response.status_code, error_of(response)) == (400, "Unrecognized servable version label: nope")
    response = rest.post(url, json={"signature_name": 100, "instances": [1.0]})
    assert response.status_code == 400 and "'signature_name' key must be a string value." in error_of(
        response
    )
    response = rest.post(url, json={"signature_name": "nope", "instances": [1.0]})
    assert (response.status_code, error_of(response)) == (
        400,
        'Serving signature name: "nope" not found in signature def',
    )


def test_predict_rows_columns_versions_and_labels(rest):
    base = "/v1/models/half_plus_two"
    # Latest is version 124, which holds half_plus_three.
    assert rest.post(f"{base}:predict", json={"instances": [[1.0, 2.0], [3.0, 4.0]]}).json() == {
        "predictions": [[3.5, 4.0], [4.5, 5.0]]
    }
    assert rest.post(f"{base}/versions/123:predict", json={"instances": [1.0, 2.0]}).json() == {
        "predictions": [2.5, 3.0]
    }
    assert rest.post(f"{base}/labels/Version_Label:predict", json={"instances": [1.0, 2.0]}).json() == {
        "predictions": [2.5, 3.0]
    }
    body = {"signature_name": "serving_default", "instances": [3.0, 4.0]}
    assert rest.post(f"{base}/versions/123:predict", json=body).json() == {"predictions": [3.5, 4.0]}
    assert rest.post("/v1/models/default:predict", json={"inputs": [3.0, 4.0]}).json() == {
        "outputs": [3.5, 4.0]
    }
    assert rest.post("/v1/models/default:predict", json={"instances": [1.0, 2.0, 5.0]}).json() == {
        "predictions": [2.5, 3.0, 4.5]
    }


def test_response_headers_are_exactly_content_type_json(rest):
    response = rest.post("/v1/models/default:predict", json={"instances": [1.0]})
    extra = set(response.headers) - {"content-type", "content-length"}
    assert response.headers["content-type"] == "application/json" and not extra
    failure = rest.post("/v1/models/foo:predict", json={"instances": [1.0]})
    assert failure.headers["content-type"] == "application/json"


def test_gzip_request_body_is_decompressed(rest):
    body = gzip.compress(json.dumps({"instances": [2.0]}).encode())
    response = rest.post("/v1/models/default:predict", content=body, headers={"Content-Encoding": "gzip"})
    assert response.json() == {"predictions": [3.0]}


def test_multi_input_and_output_row_and_columnar(rest):
    url = "/v1/models/two_inputs:predict"
    rows = {"instances": [{"a": [1.0, 2.0], "b": "x"}, {"a": [3.0, 4.0], "b": {"b64": "eXk="}}]}
    predictions = rest.post(url, json=rows).json()["predictions"]
    assert predictions == [
        {"sum": 3.0, "text_bytes": {"b64": "eCE="}},
        {"sum": 7.0, "text_bytes": {"b64": "eXkh"}},
    ]
    columns = {"inputs": {"a": [[1.0, 2.0]], "b": ["z"], "ignored": 1}}
    assert rest.post(url, json=columns).json() == {"outputs": {"sum": [3.0], "text_bytes": [{"b64": "eiE="}]}}
    response = rest.post(url, json={"instances": [[1.0, 2.0]]})
    assert response.status_code == 400 and "expecting list of objects" in error_of(response)
    response = rest.post(url, json={"inputs": {"a": [[1.0, 2.0]]}})
    assert error_of(response) == "Missing named input: b in 'inputs' object."


def test_classify_and_regress(rest):
    base = "/v1/models/half_plus_two"
    classify = {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}
    assert rest.post(f"{base}/versions/123:classify", json=classify).json() == {"results": [[["", 12.0]]]}
    classify["examples"] = [{"x": 10.0}]
    assert rest.post(f"{base}/labels/Version_Label:classify", json=classify).json() == {
        "results": [[["", 7.0]]]
    }
    regress = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    assert rest.post(f"{base}/versions/123:regress", json=regress).json() == {"results": [42.0]}
    regress = {"signature_name": "regress_x_to_y", "context": {"x": 2.0}, "examples": [{}]}
    assert rest.post("/v1/models/default:regress", json=regress).json() == {"results": [3.0]}
    response = rest.post(f"{base}:regress", json={"signature_name": "regress_x_to_y"})
    assert error_of(response).endswith(
        "When method is classify, key 'examples' is expected and was not found"
    )


def test_status_json_shape_and_label_quirk(rest):
    expected = {
        "model_version_status": [
            {"version": "124", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
    assert rest.get("/v1/models/half_plus_two").json() == expected
    assert rest.get("/v1/models/half_plus_two/labels/Version_Label").json() == expected
    assert rest.get("/v1/models/half_plus_two/labels/unknown").json() == expected
    assert rest.get("/v1/models/half_plus_two/versions/123").json() == {
        "model_version_status": [expected["model_version_status"][1]]
    }


def test_metadata_json_shape(rest):
    body = rest.get("/v1/models/half_plus_two/versions/123/metadata").json()
    assert body["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y"} <= set(signatures)
    serving_default = signatures["serving_default"]
    assert serving_default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert serving_default["method_name"] == "tensorflow/serving/predict"
    assert set(serving_default["outputs"]) == {"y"}
    latest = rest.get("/v1/models/half_plus_two/metadata").json()
    assert latest["model_spec"]["version"] == "124"
    labelled = rest.get("/v1/models/half_plus_two/labels/Version_Label/metadata").json()
    assert labelled["model_spec"]["version"] == "123"


def test_cors_preflight(rest):
    assert rest.options("/v1/models/default", headers={"Origin": "http://example.com"}).status_code == 200
    response = rest.options("/v1/models/default")
    assert (response.status_code, error_of(response)) == (400, "Origin header is missing in CORS preflight")


def test_prometheus_page_has_tf_serving_metric_names(rest, standard_server):
    rest.post("/v1/models/default:predict", json={"instances": [1.0]})
    response = rest.get(standard_server.prometheus_path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert "# TYPE :tensorflow:serving:request_latency histogram" in text
    assert "# TYPE :tensorflow:serving:runtime_latency histogram" in text
    assert "# TYPE :tensorflow:serving:model_warmup_latency histogram" in text
    assert ':tensorflow:serving:request_count{model_name="default",status="OK"}' in text
    assert 'entrypoint="REST"' in text and ":tensorflow:cc:saved_model:load_attempt_count{" in text
    assert "# HELP" not in text
