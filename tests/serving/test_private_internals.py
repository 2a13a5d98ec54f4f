"""The private pieces of uvicorn and TensorFlow that kiln-model-server builds on, checked against the
installed releases (README: Dependencies).

Neither library promises to keep them. An upgrade that removes or changes one fails here in one line naming
the piece, the installed version and the kiln file that relies on it, instead of as a server that stops
answering.
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from importlib import metadata

import pytest

REST_TRANSPORT = "serving/model_server/rest_transport.py"
SAVED_MODEL_SERVABLE = "serving/model_server/saved_model_servable.py"
HTTPTOOLS_PROTOCOL = "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol"

# What uvicorn may call on the transport it is handed: _CoalescingTransport defers `write` and flushes before
# `close`; the others it passes through, which is right for them. A call outside this set (`writelines`,
# `write_eof`, ...) would reach the socket ahead of the deferred bytes.
TRANSPORT_CALLS_KILN_HANDLES = {
    "write",
    "close",
    "is_closing",
    "get_extra_info",
    "pause_reading",
    "resume_reading",
}


def broken(package: str, change: str, relying_file: str) -> None:
    pytest.fail(
        f"{package} {metadata.version(package)} {change} ({relying_file} relies on it)", pytrace=False
    )


def _takes_one_argument(method) -> bool:
    """Whether kiln's call still binds: the instance and one positional argument. A new optional parameter
    is no change for kiln."""
    try:
        inspect.signature(method).bind(None, None)
    except TypeError:
        return False
    return True


def test_uvicorn_httptools_protocol_is_the_class_kiln_subclasses():
    try:
        from uvicorn.protocols.http import httptools_impl
    except ImportError:
        broken("uvicorn", "removed uvicorn.protocols.http.httptools_impl", REST_TRANSPORT)
    protocol = getattr(httptools_impl, "HttpToolsProtocol", None)
    if not (isinstance(protocol, type) and issubclass(protocol, asyncio.Protocol)):
        broken("uvicorn", f"removed {HTTPTOOLS_PROTOCOL} (or it is no asyncio.Protocol)", REST_TRANSPORT)
    if not _takes_one_argument(protocol.connection_made):
        now = inspect.signature(protocol.connection_made)
        broken(
            "uvicorn", f"changed HttpToolsProtocol.connection_made(self, transport) to {now}", REST_TRANSPORT
        )


class _RecordingTransport:
    """The connection's real transport, noting each method called on it, with its arguments."""

    def __init__(self, transport: asyncio.Transport, calls: list[tuple[str, tuple]]):
        self._transport = transport
        self._calls = calls

    def __getattr__(self, name: str):
        attribute = getattr(self._transport, name)
        if not callable(attribute):
            return attribute

        def recorded(*args, **kwargs):
            self._calls.append((name, args))
            return attribute(*args, **kwargs)

        return recorded


async def _hello(scope, receive, send):
    """An ASGI app answering as kiln's RestApp does: the head, then the whole body, in one go."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
    await send({"type": "http.response.body", "body": b"kiln"})


async def _two_requests_on_one_connection(protocol_class) -> tuple[list[bytes], str | None]:
    """A real uvicorn server, configured as kiln-model-server configures it, answering a kept-alive request
    and then a `Connection: close` one. Returns the raw responses read, and what went wrong if not both
    arrived whole (bytes out of order make the client wait for more)."""
    import uvicorn

    config = uvicorn.Config(
        _hello,
        http=protocol_class,
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    serving = asyncio.ensure_future(server.serve(sockets=[listener]))
    try:
        # The socket already listens: the connection waits in its backlog until the server accepts.
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        responses: list[bytes] = []
        try:
            for connection in ("keep-alive", "close"):
                writer.write(f"GET / HTTP/1.1\r\nHost: kiln\r\nConnection: {connection}\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                responses.append(head + await asyncio.wait_for(reader.readexactly(4), 10))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            return responses, f"{type(exc).__name__}: {exc}"
        finally:
            writer.close()
        return responses, None
    finally:
        server.should_exit = True  # main.py stops the REST server the same way
        await asyncio.wait_for(serving, 10)
        listener.close()


def test_uvicorn_writes_each_response_through_the_coalescing_transport():
    import uvloop

    from serving.model_server.rest_transport import CoalescingHttpToolsProtocol

    calls: list[tuple[str, tuple]] = []
    loop_missing = []

    class RecordingProtocol(CoalescingHttpToolsProtocol):
        def connection_made(self, transport):
            if not isinstance(getattr(self, "loop", None), asyncio.AbstractEventLoop):
                loop_missing.append(True)  # kiln's connection_made would raise; reported below instead
                self.loop = asyncio.get_running_loop()
            super().connection_made(_RecordingTransport(transport, calls))

    responses, exchange_error = uvloop.run(_two_requests_on_one_connection(RecordingProtocol))

    if loop_missing:
        broken(
            "uvicorn", "no longer sets HttpToolsProtocol.loop (the connection's event loop)", REST_TRANSPORT
        )
    unhandled = sorted({name for name, _ in calls} - TRANSPORT_CALLS_KILN_HANDLES)
    if unhandled:
        calls_named = ", ".join(f"transport.{name}" for name in unhandled)
        change = (
            f"calls {calls_named} from HttpToolsProtocol: rest_transport._CoalescingTransport defers only "
            "write and close, so those bytes would overtake the deferred ones"
        )
        broken("uvicorn", change, REST_TRANSPORT)
    if exchange_error:
        change = (
            "no longer answers two requests on one connection behind the coalescing transport: "
            f"{exchange_error}"
        )
        broken("uvicorn", change, REST_TRANSPORT)
    for response in responses:
        if not (response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b"\r\n\r\nkiln")):
            broken(
                "uvicorn",
                f"garbled a response behind the coalescing transport ({response!r})",
                REST_TRANSPORT,
            )
    writes = [args[0] for name, args in calls if name == "write"]
    if writes != responses:
        change = (
            f"sent 2 responses in {len(writes)} socket writes, where the coalescing transport expects each "
            "response's head and body in one loop iteration"
        )
        broken("uvicorn", change, REST_TRANSPORT)


def test_tensorflow_session_makes_a_callable_from_options():
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2

    make_callable = getattr(tf.compat.v1.Session, "_make_callable_from_options", None)
    if make_callable is None:
        broken("tensorflow", "removed Session._make_callable_from_options", SAVED_MODEL_SERVABLE)
    if not _takes_one_argument(make_callable):
        now = inspect.signature(make_callable)
        change = f"changed Session._make_callable_from_options(self, callable_options) to {now}"
        broken("tensorflow", change, SAVED_MODEL_SERVABLE)
    if "inter_op_thread_pool" not in config_pb2.RunOptions.DESCRIPTOR.fields_by_name:
        broken("tensorflow", "removed RunOptions.inter_op_thread_pool", SAVED_MODEL_SERVABLE)

    # As _SignatureCallable uses it: feeds and fetches in the signature's key order, run on the calling
    # thread, the graph finalized afterwards, numpy arrays (strings as objects) in, numpy arrays out in fetch
    # order.
    graph = tf.Graph()
    with graph.as_default():
        numbers = tf.compat.v1.placeholder(tf.float32, [None], name="numbers")
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        tf.add(numbers, tf.cast(tf.strings.length(words), tf.float32), name="total")
        tf.multiply(numbers, 2.0, name="doubled")
    session = tf.compat.v1.Session(graph=graph)
    options = config_pb2.CallableOptions(feed=["words:0", "numbers:0"], fetch=["total:0", "doubled:0"])
    options.run_options.inter_op_thread_pool = -1
    try:
        run = session._make_callable_from_options(options)  # noqa: SLF001 - the private call under test
        graph.finalize()
        outputs = run(np.array([b"ab", b"kiln"], dtype=object), np.array([1.0, 2.0], dtype=np.float32))
    except Exception as exc:  # noqa: BLE001 - any failure is the change this test reports
        error = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        broken(
            "tensorflow",
            f"changed what Session._make_callable_from_options accepts ({error})",
            SAVED_MODEL_SERVABLE,
        )
    finally:
        session.close()
    expected = [np.array([3.0, 6.0], np.float32), np.array([2.0, 4.0], np.float32)]
    if not (
        len(outputs) == 2
        and all(
            isinstance(o, np.ndarray) and np.array_equal(o, e) for o, e in zip(outputs, expected, strict=True)
        )
    ):
        change = f"changed what a callable from Session._make_callable_from_options returns ({outputs!r})"
        broken("tensorflow", change, SAVED_MODEL_SERVABLE)


def test_tensorflow_deprecation_silence_is_a_context_manager():
    import tensorflow  # noqa: F401 - tensorflow.python is only importable once tensorflow is

    try:
        from tensorflow.python.util.deprecation import silence
    except ImportError:
        broken("tensorflow", "removed tensorflow.python.util.deprecation.silence", SAVED_MODEL_SERVABLE)
    try:
        with silence():
            pass
    except Exception as exc:  # noqa: BLE001 - any failure is the change this test reports
        broken(
            "tensorflow", f"changed tensorflow.python.util.deprecation.silence ({exc})", SAVED_MODEL_SERVABLE
        )
