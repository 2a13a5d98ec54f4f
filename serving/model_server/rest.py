"""The REST API as a raw ASGI app (served by uvicorn with httptools/uvloop), routed exactly as TF Serving does.

Routing mirrors `http_server.cc` / `http_rest_api_handler.cc`: regexes are full-matched against the path *plus
the query string*, anything outside `/v1/` gets libevent's HTML 404 page, and every other miss is a 400
`Malformed request`. All model work (decode, run, encode) happens in one hop on a handler thread
(`handler_threads`) so the event loop only moves bytes.
"""

from __future__ import annotations

import gzip
import logging
import re
import time
from urllib.parse import unquote

from tensorflow_serving.apis import model_pb2

from serving import codec
from serving.codec import ServingError
from serving.model_server import inference
from serving.model_server.core import ServingCore
from serving.model_server.handler_threads import HandlerThreads

log = logging.getLogger("kiln.model_server")

V1_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
POST_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
GET_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE
)
INT64_MAX = 2**63 - 1
JSON_HEADERS = [(b"content-type", b"application/json")]
NOT_FOUND_PAGE = (
    b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
)
CORS_HEADERS = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"POST, GET"),
    (b"access-control-allow-headers", b"Content-Type"),
]
ORIGIN = re.compile(r"https?://")


class _Target:
    """A parsed model URL: name, optional version or label (URL-decoded after matching, as TF Serving does)."""

    __slots__ = ("name", "version", "label")

    def model_spec(self) -> model_pb2.ModelSpec:
        """The ModelSpec a gRPC client would send for this URL (what a request log records)."""
        spec = model_pb2.ModelSpec(name=self.name)
        if self.version is not None:
            spec.version.value = self.version
        elif self.label is not None:
            spec.version_label = self.label
        return spec

    def __init__(self, name: str | None, version: str | None, label: str | None):
        if not name:
            raise ServingError("INVALID_ARGUMENT", "Missing model name in request.")
        self.name = unquote(name)
        self.version = None
        if version:
            number = int(version)
            if number > INT64_MAX:
                raise ServingError("INVALID_ARGUMENT", f"Failed to convert version: {version} to numeric.")
            self.version = number
        self.label = unquote(label) if label else None


class RestApp:
    def __init__(
        self,
        core: ServingCore,
        threads: HandlerThreads,
        timeout_seconds: float,
        prometheus_path: str | None = None,
        enable_cors: bool = False,
    ):
        self._core = core
        self._threads = threads
        self._timeout = timeout_seconds if timeout_seconds > 0 else None
        self._prometheus_path = prometheus_path
        self._extra_headers = CORS_HEADERS if enable_cors else []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        raw_path = scope.get("raw_path") or scope["path"].encode()
        path = raw_path.decode("latin-1")
        if scope["query_string"]:
            path += "?" + scope["query_string"].decode("latin-1")
        if self._prometheus_path is not None and scope["path"] == self._prometheus_path:
            page = self._core.metrics.prometheus_text().encode()
            await _respond(send, 200, page, [(b"content-type", b"text/plain")])
            return
        if not V1_PATH.fullmatch(path):
            await _respond(send, 404, NOT_FOUND_PAGE, [(b"content-type", b"text/html")])
            return
        started = time.perf_counter()
        method = scope["method"]
        model_name, api = "", ""
        try:
            if method == "OPTIONS":
                origin = dict(scope["headers"]).get(b"origin", b"").decode("latin-1")
                if not ORIGIN.search(origin):
                    raise ServingError("FAILED_PRECONDITION", "Origin header is missing in CORS preflight")
                status, payload = 200, b""
            else:
                body = _maybe_gunzip(scope, body)
                call, model_name, api = self._route(method, path, body)
                try:
                    payload = await self._threads.run(call, self._timeout)
                except TimeoutError:
                    raise ServingError("DEADLINE_EXCEEDED", "Deadline Exceeded") from None
                status = 200
                self._core.metrics.request_latency.observe(
                    model_name, api, "REST", value=(time.perf_counter() - started) * 1e6
                )
            self._core.metrics.request_count.inc(model_name, "OK")
        except ServingError as error:
            status, payload = error.http_status, codec.error_json(error.message)
            self._core.metrics.request_count.inc(model_name, error.code)
        except Exception as exc:  # noqa: BLE001 - a bug must still answer JSON, not drop the connection
            log.exception("REST request %s %s failed", method, path)
            status, payload = 500, codec.error_json(f"{type(exc).__name__}: {exc}")
            self._core.metrics.request_count.inc(model_name, "INTERNAL")
        await _respond(send, status, payload, JSON_HEADERS + self._extra_headers)

    def _route(self, method: str, path: str, body: bytes):
        """Return (blocking call producing the JSON body, model name, API label) or raise Malformed request."""
        if (
            method == "POST"
            and (match := POST_PATH.fullmatch(path))
            and match.group(4) in ("classify", "regress", "predict")
        ):
            target = _Target(match.group(1), match.group(2), match.group(3))
            handler = {"predict": self._predict, "classify": self._classify, "regress": self._regress}[
                match.group(4)
            ]
            return (lambda: handler(target, body)), target.name, match.group(4)
        if method == "GET" and (match := GET_PATH.fullmatch(path)):
            target = _Target(match.group(1), match.group(2), match.group(3))
            if match.group(4) == "metadata":
                return (lambda: self._metadata(target)), target.name, ""
            return (lambda: self._status(target)), target.name, ""
        raise ServingError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")

    # ----- handlers (run on the thread pool) ----------------------------------------------------------------
    def _predict(self, target: _Target, body: bytes) -> bytes:
        request = codec.parse_predict_request(body)
        version, servable = self._core.manager.resolve(target.name, target.version, target.label)
        signature_name = request.signature_name or inference.DEFAULT_SIGNATURE
        signature = servable.signatures.get(signature_name)
        if signature is None:
            raise ServingError(
                "INVALID_ARGUMENT", f'Serving signature name: "{signature_name}" not found in signature def'
            )
        inputs = codec.tensors_from_predict_request(request, signature.input_dtypes)
        outputs = self._core.runner_for(target.name, "predict")(servable, signature.name, inputs)
        body = codec.predict_response_json(outputs, signature.output_dtypes, request.row_format)
        self._core.request_log.rest_predict(target.name, target.model_spec, version, signature, inputs, outputs)
        return body

    def _classify(self, target: _Target, body: bytes) -> bytes:
        return self._examples("classify", target, body, inference.classify, codec.classify_response_json)

    def _regress(self, target: _Target, body: bytes) -> bytes:
        return self._examples("regress", target, body, inference.regress, codec.regress_response_json)

    def _examples(self, api: str, target: _Target, body: bytes, infer, to_json) -> bytes:
        """Classify and Regress: tf.Examples in, a result proto out, printed as TF Serving prints it."""
        signature_name, model_input = codec.parse_classify_regress_request(body, api)
        version, servable = self._core.manager.resolve(target.name, target.version, target.label)
        result = infer(servable, signature_name, model_input, self._core.runner_for(target.name, api))
        payload = to_json(result)
        signature = signature_name or inference.DEFAULT_SIGNATURE
        self._core.request_log.rest_examples(target.name, api, target.model_spec, version, signature, model_input,
                                            result)
        return payload

    def _status(self, target: _Target) -> bytes:
        # TF Serving quirk kept on purpose: a label is ignored and all versions are returned.
        return codec.status_json(self._core.manager.status(target.name, target.version))

    def _metadata(self, target: _Target) -> bytes:
        version, servable = self._core.manager.resolve(target.name, target.version, target.label)
        return codec.metadata_json(target.name, version, servable.signature_defs)


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _maybe_gunzip(scope, body: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key == b"content-encoding" and value.strip().lower() == b"gzip":
            try:
                return gzip.decompress(body)
            except (OSError, EOFError) as exc:
                raise ServingError(
                    "INVALID_ARGUMENT", f"Failed to decompress gzip request body: {exc}"
                ) from exc
    return body


async def _respond(send, status: int, payload: bytes, headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})
