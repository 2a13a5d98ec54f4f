"""TF Serving's REST JSON codec (``util/json_tensor.cc``, ``http_rest_api_util.cc``), reproduced in Python.

Pure functions: bytes in, numpy arrays / protos / bytes out, errors as :class:`ServingError` carrying
TF Serving's exact status code and message. Behaviour follows the C++ code, including its quirks
(rapidjson parse errors and offsets, ``Excepting 'instances'`` typo, 256-byte value echoes, ``%g``
float printing, rapidjson PrettyWriter layout).

Protobuf modules from TensorFlow are imported lazily: importing ``tensorflow.core`` loads the whole
TF runtime, which the predict path does not need.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import grpc
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import (
        classification_pb2,
        get_model_status_pb2,
        input_pb2,
        regression_pb2,
    )

# --------------------------------------------------------------------------------------------------
# Status codes and errors
# --------------------------------------------------------------------------------------------------

# http_server.cc::ToHTTPStatusCode
_HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

INVALID_ARGUMENT = "INVALID_ARGUMENT"
UNIMPLEMENTED = "UNIMPLEMENTED"


class ServingError(Exception):
    """A TF Serving status. ``code`` is a tensorflow.error.Code name ("INVALID_ARGUMENT", ...);
    ``message`` is TF Serving's exact text (what goes into ``{"error": message}``)."""

    def __init__(self, code: str, message: str):
        if code not in _HTTP_STATUS or code == "OK":
            raise ValueError(f"ServingError code must be a non-OK tensorflow.error.Code name, got {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"ServingError({self.code!r}, {self.message!r})"

    def __str__(self) -> str:
        return self.message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS[self.code]

    @property
    def grpc_status(self) -> grpc.StatusCode:
        import grpc

        return grpc.StatusCode[self.code]

    def status_string(self) -> str:
        """``absl::Status::ToString()``: how a nested cause is quoted inside another message."""
        return f"{self.code}: {self.message}"


def _invalid(message: str) -> ServingError:
    return ServingError(INVALID_ARGUMENT, message)


# --------------------------------------------------------------------------------------------------
# DataType enum (tensorflow/core/framework/types.proto). Mirrored here so the predict path does not
# import TensorFlow; the values are part of the wire format and never change.
# --------------------------------------------------------------------------------------------------

DT_FLOAT = 1
DT_DOUBLE = 2
DT_INT32 = 3
DT_UINT8 = 4
DT_INT16 = 5
DT_INT8 = 6
DT_STRING = 7
DT_COMPLEX64 = 8
DT_INT64 = 9
DT_BOOL = 10
DT_BFLOAT16 = 14
DT_UINT16 = 17
DT_COMPLEX128 = 18
DT_HALF = 19
DT_UINT32 = 22
DT_UINT64 = 23

_DTYPE_NAMES = [
    "invalid",
    "float",
    "double",
    "int32",
    "uint8",
    "int16",
    "int8",
    "string",
    "complex64",
    "int64",
    "bool",
    "qint8",
    "quint8",
    "qint32",
    "bfloat16",
    "qint16",
    "quint16",
    "uint16",
    "complex128",
    "half",
    "resource",
    "variant",
    "uint32",
    "uint64",
    "float8_e5m2",
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e4m3b11fnuz",
    "float8_e5m2fnuz",
    "int4",
    "uint4",
    "int2",
    "uint2",
    "float4_e2m1fn",
]


def dtype_string(dtype: int) -> str:
    """TensorFlow's ``DataTypeString``: ``DT_FLOAT`` -> ``float``, ``DT_HALF_REF`` -> ``half_ref``."""
    base, ref = (dtype - 100, "_ref") if dtype > 100 else (dtype, "")
    if 0 < base < len(_DTYPE_NAMES):
        return _DTYPE_NAMES[base] + ref
    return f"unknown dtype enum ({dtype})"


_NUMPY_INPUT_DTYPE = {
    DT_FLOAT: np.float32,
    DT_DOUBLE: np.float64,
    DT_INT32: np.int32,
    DT_INT16: np.int16,
    DT_INT8: np.int8,
    DT_UINT8: np.uint8,
    DT_INT64: np.int64,
    DT_UINT32: np.uint32,
    DT_UINT64: np.uint64,
    DT_BOOL: np.bool_,
    DT_STRING: np.object_,
}

_FLT_MAX = float(np.finfo(np.float32).max)
_DBL_MAX = float(np.finfo(np.float64).max)
_INT32_MIN, _INT32_LIMIT = -(2**31), 2**31
_INT64_MIN, _INT64_LIMIT = -(2**63), 2**63
_UINT32_LIMIT, _UINT64_LIMIT = 2**32, 2**64
# Largest integer a float / double holds exactly (IsLosslessDecimal's kMaxInt).
_FLOAT_MAX_EXACT_INT = 2**24 - 1
_DOUBLE_MAX_EXACT_INT = 2**53 - 1
# rapidjson's Value::IsFloat() range check.
_RAPIDJSON_FLOAT_RANGE = 3.4028234e38

# Tensors with more dimensions than numpy supports cannot be built here.
_MAX_RANK = 64

# --------------------------------------------------------------------------------------------------
# Float printing (json_tensor.cc::WriteDecimal)
# --------------------------------------------------------------------------------------------------

_F32 = struct.Struct("<f")


def _to_float32(value: float) -> float:
    try:
        return _F32.unpack(_F32.pack(value))[0]
    except OverflowError:
        return math.copysign(math.inf, value)


def format_float(value: float, dtype: int) -> str:
    """TF Serving's float text: ``%g`` (absl::StrCat), ``%.9g`` / ``%.17g`` if that does not round-trip
    for the dtype, ``.0`` appended to whole numbers, bare ``NaN`` / ``Infinity`` / ``-Infinity``.

    ``dtype`` is ``DT_FLOAT`` (the value is first rounded to float32) or ``DT_DOUBLE``."""
    value = float(value)
    if value != value:
        return "NaN"
    if value == math.inf:
        return "Infinity"
    if value == -math.inf:
        return "-Infinity"
    if dtype == DT_FLOAT:
        value = _to_float32(value)
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        # absl's SixDigitsToBuffer prints both zeros as "0".
        return "0.0"
    text = f"{value:g}"
    if dtype == DT_FLOAT:
        if _to_float32(float(text)) != value:
            text = f"{value:.9g}"
    elif float(text) != value:
        text = f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def _format_float_tokens(values: list[float], dtype: int) -> list[bytes]:
    fmt = format_float
    return [fmt(v, dtype).encode() for v in values]


# --------------------------------------------------------------------------------------------------
# rapidjson Writer emulation: strings, doubles and the PrettyWriter layout
# --------------------------------------------------------------------------------------------------

_STRING_ESCAPE_RE = re.compile(rb'[\x00-\x1f"\\]')
_STRING_ESCAPES = [b"\\u%04X" % i for i in range(32)]
for _byte, _escape in ((0x08, b"\\b"), (0x09, b"\\t"), (0x0A, b"\\n"), (0x0C, b"\\f"), (0x0D, b"\\r")):
    _STRING_ESCAPES[_byte] = _escape
_STRING_ESCAPES += [b""] * (256 - 32)
_STRING_ESCAPES[0x22] = b'\\"'
_STRING_ESCAPES[0x5C] = b"\\\\"


def _escape_match(match: re.Match[bytes]) -> bytes:
    return _STRING_ESCAPES[match.group()[0]]


def _json_bytes(raw: bytes) -> bytes:
    """rapidjson Writer::String: escapes quote, backslash and control bytes; other bytes pass raw."""
    if _STRING_ESCAPE_RE.search(raw) is None:
        return b'"' + raw + b'"'
    return b'"' + _STRING_ESCAPE_RE.sub(_escape_match, raw) + b'"'


def _utf8(text: str) -> bytes:
    # Strings parsed from invalid UTF-8 keep their raw bytes as surrogate escapes.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace")


def _json_str(text: str) -> bytes:
    return _json_bytes(_utf8(text))


def _rapidjson_double(value: float) -> bytes:
    """rapidjson Writer::Double (Grisu shortest digits + Prettify) for a finite double."""
    if value == 0:
        return b"-0.0" if math.copysign(1.0, value) < 0 else b"0.0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    all_digits = int_part + frac_part
    point = len(int_part) + (int(exponent) if exponent else 0)
    stripped = all_digits.lstrip("0")
    point -= len(all_digits) - len(stripped)
    digits = stripped.rstrip("0")
    length, kk = len(digits), point
    k = kk - length
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif length == 1:
        text = f"{digits}e{kk - 1}"
    else:
        text = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return (sign + text).encode()


class _WriterStop(Exception):
    """Raised inside the echo writer to stop early (output full, or a value rapidjson cannot write)."""


class _PrettyWriter:
    """rapidjson::PrettyWriter (4-space indent) with kFormatSingleLineArray support, for echoing
    JSON values in error messages. ``limit`` stops writing once that many bytes are out."""

    def __init__(self, limit: int | None = None):
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.levels: list[list[Any]] = []  # [in_array, value_count]
        self.single_line = False

    def _put(self, chunk: bytes) -> None:
        self.parts.append(chunk)
        self.size += len(chunk)
        if self.limit is not None and self.size >= self.limit:
            raise _WriterStop

    def _indent(self) -> bytes:
        return b"    " * len(self.levels)

    def _prefix(self) -> None:
        if not self.levels:
            return
        level = self.levels[-1]
        if level[0]:
            if level[1] > 0:
                self._put(b", " if self.single_line else b",")
            if not self.single_line:
                self._put(b"\n" + self._indent())
        else:
            if level[1] > 0:
                self._put(b",\n" if level[1] % 2 == 0 else b": ")
            else:
                self._put(b"\n")
            if level[1] % 2 == 0:
                self._put(self._indent())
        level[1] += 1

    def raw(self, token: bytes) -> None:
        self._prefix()
        self._put(token)

    def start(self, in_array: bool) -> None:
        self._prefix()
        self._put(b"[" if in_array else b"{")
        self.levels.append([in_array, 0])

    def end(self) -> None:
        in_array, count = self.levels.pop()
        if count and (not in_array or not self.single_line):
            self._put(b"\n" + self._indent())
        self._put(b"]" if in_array else b"}")

    def value(self, val: Any) -> None:
        """Writes a parsed JSON value the way rapidjson's Value::Accept does. Iterative, so deep
        nesting cannot exhaust the Python stack."""
        todo: list[Any] = [val]
        end_marker = _END
        while todo:
            item = todo.pop()
            if item is end_marker:
                self.end()
            elif type(item) is _Key:
                self.raw(_json_str(item.name))
            elif isinstance(item, list):
                self.start(True)
                todo.append(end_marker)
                todo.extend(reversed(item))
            elif isinstance(item, dict):
                self.start(False)
                todo.append(end_marker)
                for key, member in reversed(list(item.items())):
                    todo.append(member)
                    todo.append(_Key(key))
            else:
                # rapidjson writes the separator before it finds out a number cannot be written.
                self._prefix()
                self._put(_scalar_token(item))

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class _Key:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


_END = object()


def _scalar_token(val: Any) -> bytes:
    if val is None:
        return b"null"
    if val is True:
        return b"true"
    if val is False:
        return b"false"
    if isinstance(val, str):
        return _json_str(val)
    if isinstance(val, int) and _INT64_MIN <= val < _UINT64_LIMIT:
        return str(val).encode()
    number = float(val)
    if not math.isfinite(number):
        # Writer::Double refuses NaN/Inf without kWriteNanAndInfFlag, which aborts the whole write.
        raise _WriterStop
    return _rapidjson_double(number)


_ECHO_LIMIT = 256


def _is_rapidjson_double(val: Any) -> bool:
    if isinstance(val, float):
        return True
    return type(val) is int and not (_INT64_MIN <= val < _UINT64_LIMIT)


def json_value_to_string(val: Any) -> str:
    """json_tensor.cc::JsonValueToString: a parsed value as rapidjson pretty-prints it (top-level
    numbers through WriteDecimal), truncated to 256 bytes."""
    if _is_rapidjson_double(val):
        number = float(val)
        if -_RAPIDJSON_FLOAT_RANGE <= number <= _RAPIDJSON_FLOAT_RANGE:
            return format_float(number, DT_FLOAT)
        return format_float(number, DT_DOUBLE)
    writer = _PrettyWriter(limit=_ECHO_LIMIT)
    with contextlib.suppress(_WriterStop):
        writer.value(val)
    return writer.getvalue()[:_ECHO_LIMIT].decode("utf-8", "replace")


def _json_type(val: Any) -> str:
    if val is None:
        return "Null"
    if val is True:
        return "True"
    if val is False:
        return "False"
    if isinstance(val, dict):
        return "Object"
    if isinstance(val, list):
        return "Array"
    if isinstance(val, str):
        return "String"
    return "Number"


def error_json(message: str) -> bytes:
    """``{"error": message}`` as TF Serving writes it (MakeJsonFromStatus)."""
    return b'{\n    "error": ' + _json_str(message) + b"\n}"


# --------------------------------------------------------------------------------------------------
# JSON parsing with rapidjson semantics
# --------------------------------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_LEADING_WS = re.compile(r"[ \t\n\r]*")
# Inputs where Python's json and rapidjson (kParseNanAndInfFlag, normal precision) may disagree:
# numbers rapidjson reports as too big (3-digit positive exponents, 300-digit runs) and \u surrogate
# escapes (rapidjson rejects lone ones). Searched in a copy with digits as "0" and "E", "+" as "e",
# which is several times faster than a regular expression over the body.
_NUMBER_SHAPE = bytes.maketrans(b"0123456789E+", b"0000000000ee")
_LONG_DIGIT_RUN = b"0" * 300
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _needs_rapidjson_parser(body: bytes) -> bool:
    shape = body.translate(_NUMBER_SHAPE)
    if _LONG_DIGIT_RUN in shape:
        return True
    index = shape.find(b"e")
    while index != -1:
        if shape[index + 1 : index + 4] == b"000":
            return True
        index = shape.find(b"e", index + 1)
    return b"\\u" in body and _SURROGATE_ESCAPE.search(body) is not None


def _parse_document(body: bytes) -> dict[str, Any]:
    """rapidjson ParseStream<kParseNanAndInfFlag | kParseStopWhenDoneFlag>, then the object check."""
    if not body:
        raise _invalid("JSON Parse error: The document is empty")
    if not _needs_rapidjson_parser(body):
        try:
            text = body.decode("utf-8")
            value, _ = _DECODER.raw_decode(text, _LEADING_WS.match(text).end())
        except (ValueError, RecursionError):
            pass
        else:
            if type(value) is dict:
                return value
    # Errors, top-level scalars, and everything flagged above take the exact (slower) path.
    value = _RapidJsonReader(body).parse()
    if type(value) is not dict:
        raise _invalid(f"JSON Value: {json_value_to_string(value)} Is not object")
    return value


_RAPIDJSON_ERRORS = {
    "empty": "The document is empty.",
    "invalid_value": "Invalid value.",
    "miss_name": "Missing a name for object member.",
    "miss_colon": "Missing a colon after a name of object member.",
    "miss_comma_curly": "Missing a comma or '}' after an object member.",
    "miss_comma_square": "Missing a comma or ']' after an array element.",
    "bad_hex": "Incorrect hex digit after \\u escape in string.",
    "bad_surrogate": "The surrogate pair in string is invalid.",
    "bad_escape": "Invalid escape character in string.",
    "miss_quote": "Missing a closing quotation mark in string.",
    "bad_encoding": "Invalid encoding in string.",
    "too_big": "Number too big to be stored in double.",
    "miss_fraction": "Miss fraction part in number.",
    "miss_exponent": "Miss exponent in number.",
}

_WS_BYTES = b" \t\n\r"
_DIGITS = re.compile(rb"[0-9]*")
_STRING_SPECIAL = re.compile(rb'["\\\x00-\x1f]')
_SIMPLE_ESCAPES = {
    ord('"'): b'"',
    ord("\\"): b"\\",
    ord("/"): b"/",
    ord("b"): b"\b",
    ord("f"): b"\f",
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
}
_HEX = frozenset(b"0123456789abcdefABCDEF")


class _RapidJsonReader:
    """An iterative re-implementation of rapidjson's Reader for the flags TF Serving uses: same
    accepted language (NaN, Inf, Infinity, -NaN; no validation of UTF-8), same error texts and byte
    offsets. Used when the fast path (Python's json) fails or might disagree."""

    def __init__(self, data: bytes):
        self.data = data
        self.size = len(data)

    def fail(self, kind: str, offset: int) -> ServingError:
        return _invalid(f"JSON Parse error: {_RAPIDJSON_ERRORS[kind]} at offset: {offset}")

    def peek(self, pos: int) -> int:
        # rapidjson's MemoryStream yields '\0' at the end; a NUL byte in the input looks the same.
        return self.data[pos] if pos < self.size else 0

    def skip_ws(self, pos: int) -> int:
        data, size = self.data, self.size
        while pos < size and data[pos] in _WS_BYTES:
            pos += 1
        return pos

    def parse(self) -> Any:
        pos = self.skip_ws(0)
        if self.peek(pos) == 0:
            raise self.fail("empty", pos)
        # Containers being filled: [container, pending_key]. Trailing bytes after the root are ignored
        # (kParseStopWhenDoneFlag).
        stack: list[list[Any]] = []
        while True:
            char = self.peek(pos)
            if char == 0x7B:  # {
                pos = self.skip_ws(pos + 1)
                if self.peek(pos) == 0x7D:
                    value, pos = {}, pos + 1
                else:
                    frame: list[Any] = [{}, None]
                    frame[1], pos = self.member_name(pos)
                    stack.append(frame)
                    continue
            elif char == 0x5B:  # [
                pos = self.skip_ws(pos + 1)
                if self.peek(pos) == 0x5D:
                    value, pos = [], pos + 1
                else:
                    stack.append([[], None])
                    continue
            elif char == 0x22:
                value, pos = self.string(pos)
            elif char == 0x6E:
                value, pos = None, self.literal(pos, b"null")
            elif char == 0x74:
                value, pos = True, self.literal(pos, b"true")
            elif char == 0x66:
                value, pos = False, self.literal(pos, b"false")
            else:
                value, pos = self.number(pos)
            # A value is complete: hand it to its container, closing containers as they end.
            while True:
                if not stack:
                    return value
                container, key = stack[-1]
                if key is None:
                    container.append(value)
                    pos = self.skip_ws(pos)
                    char = self.peek(pos)
                    if char == 0x2C:
                        pos = self.skip_ws(pos + 1)
                        break
                    if char == 0x5D:
                        pos += 1
                        value = stack.pop()[0]
                        continue
                    raise self.fail("miss_comma_square", pos)
                container[key] = value
                pos = self.skip_ws(pos)
                char = self.peek(pos)
                if char == 0x2C:
                    stack[-1][1], pos = self.member_name(self.skip_ws(pos + 1))
                    break
                if char == 0x7D:
                    pos += 1
                    value = stack.pop()[0]
                    continue
                raise self.fail("miss_comma_curly", pos)

    def member_name(self, pos: int) -> tuple[str, int]:
        if self.peek(pos) != 0x22:
            raise self.fail("miss_name", pos)
        name, pos = self.string(pos)
        pos = self.skip_ws(pos)
        if self.peek(pos) != 0x3A:
            raise self.fail("miss_colon", pos)
        return name, self.skip_ws(pos + 1)

    def literal(self, pos: int, word: bytes) -> int:
        for expected in word[1:]:
            pos += 1
            if self.peek(pos) != expected:
                raise self.fail("invalid_value", pos)
        return pos + 1

    def string(self, pos: int) -> tuple[str, int]:
        data = self.data
        out = bytearray()
        pos += 1
        while True:
            match = _STRING_SPECIAL.search(data, pos)
            end = match.start() if match else self.size
            out += data[pos:end]
            pos = end
            char = self.peek(pos)
            if char == 0x22 and pos < self.size:
                return out.decode("utf-8", "surrogateescape"), pos + 1
            if char == 0x5C:
                escape_offset = pos
                pos += 1
                kind = self.peek(pos)
                if kind in _SIMPLE_ESCAPES:
                    out += _SIMPLE_ESCAPES[kind]
                    pos += 1
                elif kind == 0x75:  # u
                    codepoint, pos = self.hex4(pos + 1, escape_offset)
                    if 0xD800 <= codepoint <= 0xDFFF:
                        if codepoint > 0xDBFF or data[pos : pos + 2] != b"\\u":
                            raise self.fail("bad_surrogate", escape_offset)
                        low, pos = self.hex4(pos + 2, escape_offset)
                        if not 0xDC00 <= low <= 0xDFFF:
                            raise self.fail("bad_surrogate", escape_offset)
                        codepoint = (((codepoint - 0xD800) << 10) | (low - 0xDC00)) + 0x10000
                    out += chr(codepoint).encode("utf-8")
                else:
                    raise self.fail("bad_escape", escape_offset)
            elif char == 0:
                raise self.fail("miss_quote", pos)
            else:
                raise self.fail("bad_encoding", pos)

    def hex4(self, pos: int, escape_offset: int) -> tuple[int, int]:
        chunk = self.data[pos : pos + 4]
        if len(chunk) < 4 or any(byte not in _HEX for byte in chunk):
            raise self.fail("bad_hex", escape_offset)
        return int(chunk, 16), pos + 4

    def number(self, start: int) -> tuple[Any, int]:
        data = self.data
        pos = start
        minus = self.peek(pos) == 0x2D
        if minus:
            pos += 1
        char = self.peek(pos)
        if char == 0x30:
            int_digits = b"0"
            pos += 1
        elif 0x31 <= char <= 0x39:
            end = _DIGITS.match(data, pos).end()
            int_digits = data[pos:end]
            pos = end
        elif char in (0x49, 0x4E):  # I, N
            return self.nan_or_inf(pos, minus)
        else:
            raise self.fail("invalid_value", pos)

        # Integer part: fits the 64-bit integer range (int64 magnitude 2^63 when negative), or
        # becomes a double accumulated digit by digit, as rapidjson does.
        limit = _INT64_LIMIT if minus else _UINT64_LIMIT - 1
        integer = 0
        big_int: float | None = None
        if len(int_digits) <= 20 and int(int_digits) <= limit:
            integer = int(int_digits)
        else:
            prefix_len = 20
            while int(int_digits[:prefix_len]) > limit:
                prefix_len -= 1
            big_int = float(int(int_digits[:prefix_len]))
            for digit in int_digits[prefix_len:]:
                if big_int >= 1.7976931348623157e307:
                    raise self.fail("too_big", start)
                big_int = big_int * 10 + (digit - 0x30)

        is_double = big_int is not None
        frac_exponent = 0
        if self.peek(pos) == 0x2E:
            pos += 1
            if not 0x30 <= self.peek(pos) <= 0x39:
                raise self.fail("miss_fraction", pos)
            end = _DIGITS.match(data, pos).end()
            frac_exponent = self.counted_fraction_digits(int_digits, data[pos:end], big_int is not None)
            pos = end
            is_double = True
        has_exponent = self.peek(pos) in (0x65, 0x45)  # e, E
        if has_exponent:
            pos += 1
            exp_minus = self.peek(pos) == 0x2D
            if self.peek(pos) in (0x2B, 0x2D):
                pos += 1
            if not 0x30 <= self.peek(pos) <= 0x39:
                raise self.fail("miss_exponent", pos)
            end = _DIGITS.match(data, pos).end()
            exp_digits = data[pos:end].lstrip(b"0") or b"0"
            pos = end
            if not exp_minus and (len(exp_digits) > 6 or int(exp_digits) > 308 - frac_exponent):
                raise self.fail("too_big", start)
            is_double = True

        if not is_double:
            return (-integer if minus else integer), pos
        if (
            big_int is not None
            and not has_exponent
            and frac_exponent == 0
            and self.data[pos - 1 : pos] != b"."
        ):
            value = -big_int if minus else big_int
        else:
            value = float(data[start:pos])
        if abs(value) > _DBL_MAX:
            raise self.fail("too_big", start)
        return value, pos

    @staticmethod
    def counted_fraction_digits(int_digits: bytes, frac_digits: bytes, big_int: bool) -> int:
        """rapidjson's ``expFrac`` (negative): fraction digits that entered the significand, which
        stops growing after about 17 significant digits."""
        if big_int:
            return 0
        significand = int(int_digits) if len(int_digits) <= 20 else 0
        significant = len(int_digits) - 1 if significand else 0
        counted = 0
        index = 0
        # 64-bit integer phase: digits are taken while the significand stays <= 2^53 - 1.
        while index < len(frac_digits) and significand <= _DOUBLE_MAX_EXACT_INT:
            significand = significand * 10 + frac_digits[index] - 0x30
            counted += 1
            if significand:
                significant += 1
            index += 1
        # Double phase: up to 17 significant digits.
        while index < len(frac_digits) and significant < 17:
            counted += 1
            significant += 1
            index += 1
        return -counted

    def nan_or_inf(self, pos: int, minus: bool) -> tuple[float, int]:
        if self.peek(pos) == 0x4E:
            pos += 1
            for expected in b"aN":
                if self.peek(pos) != expected:
                    raise self.fail("invalid_value", pos)
                pos += 1
            return math.nan, pos
        pos += 1
        for expected in b"nf":
            if self.peek(pos) != expected:
                raise self.fail("invalid_value", pos)
            pos += 1
        if self.peek(pos) == 0x69:  # "Infinity"
            for expected in b"inity":
                if self.peek(pos) != expected:
                    raise self.fail("invalid_value", pos)
                pos += 1
        return (-math.inf if minus else math.inf), pos


# --------------------------------------------------------------------------------------------------
# Predict request
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictJsonRequest:
    signature_name: str  # "" when the body has none (the server then uses "serving_default")
    row_format: bool  # True for "instances", False for "inputs"
    payload: object  # the parsed JSON value of "instances" / "inputs"
    # TF Serving checks the instances/inputs keys only after resolving the signature (a missing
    # servable or signature wins over a malformed body), so such an error waits here and
    # tensors_from_predict_request raises it.
    deferred_error: ServingError | None = None


def _format_error(doc: Any, text: str) -> ServingError:
    return _invalid(f"JSON Value: {json_value_to_string(doc)} {text}")


def _signature_name(doc: dict[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if type(name) is not str:
        raise _format_error(doc, "not formatted correctly. 'signature_name' key must be a string value.")
    return name


def parse_predict_request(body: bytes) -> PredictJsonRequest:
    """Parses a predict body (FillPredictRequestFromJson up to the signature lookup).

    Raises ServingError for JSON syntax errors, a non-object body and a non-string signature_name.
    Errors about the ``instances``/``inputs`` keys are carried in ``deferred_error`` and raised by
    :func:`tensors_from_predict_request`, matching TF Serving's order of checks."""
    doc = _parse_document(body)
    signature_name = _signature_name(doc)
    if "instances" in doc:
        instances = doc["instances"]
        if "inputs" in doc:
            error = _format_error(
                doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
            )
        elif type(instances) is not list:
            error = _format_error(doc, "Excepting 'instances' to be an list/array")
        elif not instances:
            error = _format_error(doc, "No values in 'instances' array")
        else:
            return PredictJsonRequest(signature_name, True, instances)
        return PredictJsonRequest(signature_name, True, None, error)
    if "inputs" in doc:
        return PredictJsonRequest(signature_name, False, doc["inputs"])
    return PredictJsonRequest(signature_name, False, None, _invalid("Missing 'inputs' or 'instances' key"))


def _is_b64_object(val: Any) -> bool:
    return type(val) is dict and len(val) == 1 and type(val.get("b64")) is str


def _type_error(val: Any, dtype: int) -> ServingError:
    return _invalid(
        f"JSON Value: {json_value_to_string(val)} Type: {_json_type(val)} "
        f"is not of expected type: {dtype_string(dtype)}"
    )


def _lossy_error(val: Any, target: str) -> ServingError:
    return _invalid(
        f"Cannot convert JSON value: {json_value_to_string(val)} to {target} without loss of precision."
    )


def _is_number(val: Any) -> bool:
    return (type(val) is int or type(val) is float) and val is not True and val is not False


def _lossless(val: Any, max_exact_int: int, max_value: float) -> bool:
    """IsLosslessDecimal<T>: integers must fit the mantissa, doubles the range; non-finite is fine."""
    if type(val) is int and _INT64_MIN <= val < _UINT64_LIMIT:
        return abs(val) <= max_exact_int
    number = float(val)
    return not math.isfinite(number) or abs(number) <= max_value


def _convert_float(val: Any) -> float:
    if not _is_number(val):
        raise _type_error(val, DT_FLOAT)
    if not _lossless(val, _FLOAT_MAX_EXACT_INT, _FLT_MAX):
        raise _lossy_error(val, "float")
    return float(val)


def _convert_double(val: Any) -> float:
    if not _is_number(val):
        raise _type_error(val, DT_DOUBLE)
    if not _lossless(val, _DOUBLE_MAX_EXACT_INT, _DBL_MAX):
        raise _lossy_error(val, "double")
    return float(val)


def _int_converter(dtype: int, low: int, limit: int) -> Callable[[Any], int]:
    def convert(val: Any) -> int:
        if type(val) is not int or not low <= val < limit:
            raise _type_error(val, dtype)
        return val

    return convert


def _convert_bool(val: Any) -> bool:
    if type(val) is not bool:
        raise _type_error(val, DT_BOOL)
    return val


def _convert_string(val: Any) -> bytes:
    if type(val) is not str:
        raise _type_error(val, DT_STRING)
    return _utf8(val)


def _unimplemented_converter(dtype: int) -> Callable[[Any], Any]:
    def convert(val: Any) -> Any:
        raise ServingError(
            UNIMPLEMENTED,
            f"Conversion of JSON Value: {json_value_to_string(val)} to type: {dtype_string(dtype)}",
        )

    return convert


_CONVERTERS: dict[int, Callable[[Any], Any]] = {
    DT_FLOAT: _convert_float,
    DT_DOUBLE: _convert_double,
    DT_INT32: _int_converter(DT_INT32, _INT32_MIN, _INT32_LIMIT),
    DT_INT16: _int_converter(DT_INT16, _INT32_MIN, _INT32_LIMIT),
    DT_INT8: _int_converter(DT_INT8, _INT32_MIN, _INT32_LIMIT),
    DT_UINT8: _int_converter(DT_UINT8, _INT32_MIN, _INT32_LIMIT),
    DT_INT64: _int_converter(DT_INT64, _INT64_MIN, _INT64_LIMIT),
    DT_UINT32: _int_converter(DT_UINT32, 0, _UINT32_LIMIT),
    DT_UINT64: _int_converter(DT_UINT64, 0, _UINT64_LIMIT),
    DT_BOOL: _convert_bool,
    DT_STRING: _convert_string,
}

_BASE64_CHARS = re.compile(rb"[A-Za-z0-9+/]*")


def _base64_unescape(text: str) -> bytes | None:
    """absl::Base64Unescape: standard alphabet, whitespace ignored, padding optional."""
    raw = bytes(byte for byte in _utf8(text) if byte not in b" \t\n\v\f\r")
    stripped = raw.rstrip(b"=")
    padding = len(raw) - len(stripped)
    if _BASE64_CHARS.fullmatch(stripped) is None or len(stripped) % 4 == 1 or padding > 2:
        return None
    if padding and (len(stripped) + padding) % 4:
        return None
    try:
        return base64.b64decode(stripped + b"=" * (-len(stripped) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _decode_b64_object(val: Any) -> bytes:
    if not _is_b64_object(val):
        raise _invalid(f"JSON Value: {json_value_to_string(val)} not formatted correctly for base64 data")
    decoded = _base64_unescape(val["b64"])
    if decoded is None:
        raise _invalid("Unable to base64 decode")
    return decoded


def _dense_shape(val: Any) -> list[int]:
    """GetDenseTensorShape: the shape implied by the first element of every nesting level."""
    shape = []
    while type(val) is list:
        shape.append(len(val))
        if not val:
            break
        val = val[0]
    return shape


def _fill_values(val: Any, shape: list[int], dtype: int, out: list[Any]) -> None:
    """FillTensorProto: appends the leaves of ``val`` (depth-first) to ``out``, checking that every
    leaf sits at depth ``len(shape)`` and every list has the size ``shape`` expects."""
    rank = len(shape)
    convert = _CONVERTERS.get(dtype) or _unimplemented_converter(dtype)
    todo: list[tuple[Any, int]] = [(val, 0)]
    while todo:
        item, level = todo.pop()
        if type(item) is list:
            if level >= rank:
                raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
            if len(item) != shape[level]:
                raise _invalid(
                    f"Encountered list at unexpected size: {len(item)} at level: {level} "
                    f"expected size: {shape[level]}"
                )
            todo.extend((child, level + 1) for child in reversed(item))
            continue
        if level != rank:
            raise _invalid(
                f"JSON Value: {json_value_to_string(item)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}"
            )
        if type(item) is dict:
            if dtype != DT_STRING:
                raise _type_error(item, dtype)
            out.append(_decode_b64_object(item))
        else:
            out.append(convert(item))


class _PendingTensor:
    """Values and shape of one input while it is being assembled (TensorProto's role in C++)."""

    __slots__ = ("dtype", "shape", "values")

    def __init__(self, dtype: int):
        self.dtype = dtype
        self.shape: list[int] = []
        self.values: list[Any] = []


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(dim) for dim in shape) + "]"


def _add_instance_item(
    item: Any, name: str, input_dtypes: Mapping[str, int], tensors: dict[str, _PendingTensor], seen: dict
) -> None:
    """AddInstanceItem: one instance's value for input ``name``; all instances must agree in shape."""
    if name not in input_dtypes:
        raise _invalid(f"JSON object: does not have named input: {name}")
    tensor = tensors.get(name)
    if tensor is None:
        tensor = tensors[name] = _PendingTensor(input_dtypes[name])
    shape = _dense_shape(item)
    values: list[Any] = []
    _fill_values(item, shape, tensor.dtype, values)
    if name not in seen:
        seen[name] = (len(values), shape)
        tensor.shape = shape
    else:
        expected_size, expected_shape = seen[name]
        if expected_size != len(values):
            raise _invalid(f"Expecting tensor size: {expected_size} but got: {len(values)}")
        if expected_shape != shape:
            raise _invalid(f"Expecting shape {_shape_text(expected_shape)} but got: {_shape_text(shape)}")
    tensor.values.extend(values)


def _wrap_instance_error(error: ServingError, index: int, key: str | None) -> ServingError:
    where = f"{index}" if key is None else f"{index} key: {key}"
    return _invalid(f"Failed to process element: {where} of 'instances' list. Error: {error.status_string()}")


def _tensors_from_instances(
    instances: list[Any], input_dtypes: Mapping[str, int]
) -> dict[str, _PendingTensor]:
    """FillTensorMapFromInstancesList (row format)."""
    if type(instances[0]) is not dict and len(input_dtypes) > 1:
        raise _invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map"
        )
    named = type(instances[0]) is dict and not _is_b64_object(instances[0])
    input_names = sorted(input_dtypes, key=_utf8)
    tensors: dict[str, _PendingTensor] = {}
    seen: dict[str, tuple[int, list[int]]] = {}
    first_name = next(iter(input_dtypes))
    for index, element in enumerate(instances):
        element_is_named = type(element) is dict and not _is_b64_object(element)
        if named:
            if not element_is_named:
                raise _invalid(f"Expecting object but got list at item {index} of input list")
            for key, value in element.items():
                try:
                    _add_instance_item(value, key, input_dtypes, tensors, seen)
                except ServingError as error:
                    raise _wrap_instance_error(error, index, key) from None
            if sorted(element, key=_utf8) != input_names:
                raise _invalid(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{json_value_to_string(element)} keys must be equal to: {','.join(input_names)}"
                )
        else:
            if element_is_named:
                raise _invalid(f"Expecting value/list but got object at item {index} of input list")
            try:
                _add_instance_item(element, first_name, input_dtypes, tensors, seen)
            except ServingError as error:
                raise _wrap_instance_error(error, index, None) from None
    for tensor in tensors.values():
        tensor.shape = [len(instances), *tensor.shape]
    return tensors


def _tensors_from_inputs(inputs: Any, input_dtypes: Mapping[str, int]) -> dict[str, _PendingTensor]:
    """FillTensorMapFromInputsMap (columnar format)."""
    if type(inputs) is not dict or _is_b64_object(inputs):
        if len(input_dtypes) > 1:
            raise _invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map"
            )
        items = [(next(iter(input_dtypes)), inputs)]
    else:
        items = []
        for name in input_dtypes:
            if name not in inputs:
                raise _invalid(f"Missing named input: {name} in 'inputs' object.")
            items.append((name, inputs[name]))
    tensors = {}
    for name, value in items:
        tensor = _PendingTensor(input_dtypes[name])
        tensor.shape = _dense_shape(value)
        _fill_values(value, tensor.shape, tensor.dtype, tensor.values)
        tensors[name] = tensor
    return tensors


def _to_numpy(name: str, tensor: _PendingTensor) -> np.ndarray:
    if len(tensor.shape) > _MAX_RANK:
        raise _invalid(f"tensor parsing error: {name}")
    dtype = tensor.dtype
    if dtype == DT_STRING:
        array = np.empty(len(tensor.values), dtype=object)
        array[:] = tensor.values
        return array.reshape(tensor.shape)
    if dtype == DT_FLOAT:
        return np.array(tensor.values, dtype=np.float64).astype(np.float32).reshape(tensor.shape)
    if dtype in (DT_INT8, DT_INT16, DT_UINT8):
        # Values travel as int32 (TensorProto.int_val) and are narrowed with wrap-around.
        return np.array(tensor.values, dtype=np.int32).astype(_NUMPY_INPUT_DTYPE[dtype]).reshape(tensor.shape)
    numpy_dtype = _NUMPY_INPUT_DTYPE.get(dtype) or _numpy_dtype_without_json_values(dtype)
    if numpy_dtype is None:
        raise _invalid(f"tensor parsing error: {name}")
    return np.array(tensor.values, dtype=numpy_dtype).reshape(tensor.shape)


def _numpy_dtype_without_json_values(dtype: int) -> Any:
    """Types JSON cannot carry values for; an empty tensor of them is still valid."""
    if dtype == DT_BFLOAT16:
        try:
            import ml_dtypes
        except ImportError:
            return None
        return ml_dtypes.bfloat16
    return {
        DT_HALF: np.float16,
        DT_UINT16: np.uint16,
        DT_COMPLEX64: np.complex64,
        DT_COMPLEX128: np.complex128,
    }.get(dtype)


def _fast_float_rows(instances: list[Any], dtype: int) -> np.ndarray | None:
    """The hot path: a row-format batch of flat number lists for one float/double input. Returns
    None whenever anything needs the exact (general) path, including every error case."""
    first = instances[0]
    if type(first) is list:
        width = len(first)
        for row in instances:
            if type(row) is not list or len(row) != width:
                return None
            kinds = set(map(type, row))
            if not kinds <= _NUMBER_TYPES or (int in kinds and not _ints_exact(row, dtype)):
                return None
    else:
        kinds = set(map(type, instances))
        if not kinds <= _NUMBER_TYPES or (int in kinds and not _ints_exact(instances, dtype)):
            return None
    try:
        array = np.array(instances, dtype=np.float64)
    except (ValueError, OverflowError):
        return None
    if dtype == DT_FLOAT:
        if array.size and np.fmax.reduce(np.abs(array), axis=None) > _FLT_MAX:
            return None  # out-of-range or infinite values: let the exact path decide
        return array.astype(np.float32)
    return array


_NUMBER_TYPES = frozenset((int, float))


def _ints_exact(values: list[Any], dtype: int) -> bool:
    limit = _FLOAT_MAX_EXACT_INT if dtype == DT_FLOAT else _DOUBLE_MAX_EXACT_INT
    return all(-limit <= value <= limit for value in values if type(value) is int)


def tensors_from_predict_request(
    req: PredictJsonRequest, input_dtypes: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """The request's tensors, keyed by signature input name (FillPredictRequestFromJson after the
    signature lookup, then TensorProto -> Tensor).

    ``input_dtypes`` maps each signature input key to its tensorflow DataType enum value. DT_STRING
    inputs become numpy object arrays of bytes."""
    if not input_dtypes:
        raise _invalid(f"Failed to get input map for signature: {req.signature_name or 'DEFAULT'}")
    if req.deferred_error is not None:
        raise req.deferred_error
    if req.row_format and len(input_dtypes) == 1:
        ((name, dtype),) = input_dtypes.items()
        if dtype in (DT_FLOAT, DT_DOUBLE):
            array = _fast_float_rows(req.payload, dtype)
            if array is not None:
                return {name: array}
    if req.row_format:
        pending = _tensors_from_instances(req.payload, input_dtypes)
    else:
        pending = _tensors_from_inputs(req.payload, input_dtypes)
    return {name: _to_numpy(name, tensor) for name, tensor in pending.items()}


# --------------------------------------------------------------------------------------------------
# Predict response (MakeJsonFromTensors)
# --------------------------------------------------------------------------------------------------

_INDENT = b"    "


def _numpy_dtype_enum(array: np.ndarray) -> int:
    kind = array.dtype
    for enum, numpy_type in _NUMPY_INPUT_DTYPE.items():
        if kind == numpy_type and enum != DT_STRING:
            return enum
    if kind.kind in "OSU":
        return DT_STRING
    if kind == np.float16:
        return DT_HALF
    if kind == np.uint16:
        return DT_UINT16
    if kind == np.complex64:
        return DT_COMPLEX64
    if kind == np.complex128:
        return DT_COMPLEX128
    return 0


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return _utf8(value)
    return bytes(value)


def _leaf_tokens(name: str, array: np.ndarray, dtype: int, leaf_depth: int) -> list[bytes]:
    """One JSON token per tensor element, in row-major order. ``leaf_depth`` is the number of open
    JSON containers around each leaf (it sets the indentation of ``{"b64": ...}`` objects)."""
    flat = array.reshape(-1)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        return _format_float_tokens(
            flat.astype(np.float32 if dtype == DT_FLOAT else np.float64).tolist(), dtype
        )
    if dtype in (DT_INT32, DT_INT16, DT_INT8, DT_UINT8, DT_INT64, DT_UINT32, DT_UINT64):
        return [str(int(value)).encode() for value in flat.tolist()]
    if dtype == DT_BOOL:
        return [b"true" if value else b"false" for value in flat.tolist()]
    if dtype == DT_STRING:
        raw_values = [_as_bytes(value) for value in flat.tolist()]
        if name.endswith("_bytes"):
            open_ = b"{\n" + _INDENT * (leaf_depth + 1) + b'"b64": "'
            close = b'"\n' + _INDENT * leaf_depth + b"}"
            return [open_ + base64.b64encode(raw) + close for raw in raw_values]
        return [_json_bytes(raw) for raw in raw_values]
    if flat.size:
        raise _invalid(f"Failed to write JSON value for tensor type: {dtype_string(dtype)}")
    return []


def _nest(tokens: list[bytes], shape: tuple[int, ...], depth: int, single_line: bool) -> bytes:
    """A tensor (rank >= 1) as a JSON array the way PrettyWriter lays it out; ``depth`` is the number
    of open containers around the array."""
    count = shape[0]
    if count == 0:
        return b"[]"
    if single_line:
        open_, separator, close = b"[", b", ", b"]"
    else:
        inner = b"\n" + _INDENT * (depth + 1)
        open_, separator, close = b"[" + inner, b"," + inner, b"\n" + _INDENT * depth + b"]"
    if len(shape) == 1:
        return open_ + separator.join(tokens) + close
    step = math.prod(shape[1:])
    inner_shape = shape[1:]
    items = [
        _nest(tokens[i * step : (i + 1) * step], inner_shape, depth + 1, single_line) for i in range(count)
    ]
    return open_ + separator.join(items) + close


def _output_dtype(name: str, array: np.ndarray, output_dtypes: Mapping[str, int]) -> int:
    dtype = output_dtypes.get(name)
    return dtype if dtype is not None else _numpy_dtype_enum(array)


def _row_item_value(name: str, array: np.ndarray, dtype: int, depth: int) -> list[bytes]:
    """The per-instance JSON values of one output (batch dimension first), written single-line."""
    inner_shape = array.shape[1:]
    tokens = _leaf_tokens(name, array, dtype, depth + len(inner_shape))
    if not inner_shape:
        return tokens
    batch = array.shape[0]
    step = math.prod(inner_shape)
    return [_nest(tokens[i * step : (i + 1) * step], inner_shape, depth, True) for i in range(batch)]


def _fast_float_row_predictions(array: np.ndarray, dtype: int) -> bytes:
    """Single 1-D/2-D float output in row format: the common case, without the generic writer."""
    values = array.tolist()
    fmt = format_float
    if array.ndim == 1:
        body = ", ".join([fmt(value, dtype) for value in values])
    else:
        body = ", ".join(["[" + ", ".join([fmt(value, dtype) for value in row]) + "]" for row in values])
    return b'{\n    "predictions": [' + body.encode() + b"\n    ]\n}"


def predict_response_json(
    outputs: Mapping[str, np.ndarray], output_dtypes: Mapping[str, int], row_format: bool
) -> bytes:
    """The predict response body: ``{"predictions": ...}`` for row requests, ``{"outputs": ...}`` for
    columnar ones. ``output_dtypes`` gives each output's DataType (float vs double printing);
    outputs missing from it are typed from their numpy dtype."""
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    arrays = {name: np.asarray(value) for name, value in outputs.items()}
    if row_format:
        return _row_format_json(arrays, output_dtypes)
    return _columnar_format_json(arrays, output_dtypes)


def _row_format_json(arrays: dict[str, np.ndarray], output_dtypes: Mapping[str, int]) -> bytes:
    batch_size = -1
    for name, array in arrays.items():
        if array.ndim == 0:
            raise _invalid(f"Tensor name: {name} has no shape information ")
        current = array.shape[0]
        if batch_size >= 0 and batch_size != current:
            raise _invalid(
                f"Tensor name: {name} has inconsistent batch size: {current} expecting: {batch_size}"
            )
        batch_size = current
    if batch_size == 0:
        return b'{\n    "predictions": []\n}'
    if len(arrays) == 1:
        ((name, array),) = arrays.items()
        dtype = _output_dtype(name, array, output_dtypes)
        if dtype in (DT_FLOAT, DT_DOUBLE) and array.ndim <= 2 and array.size:
            return _fast_float_row_predictions(array, dtype)
        items = _row_item_value(name, array, dtype, 2)
        return b'{\n    "predictions": [' + b", ".join(items) + b"\n    ]\n}"
    per_output = [
        (_json_str(name), _row_item_value(name, array, _output_dtype(name, array, output_dtypes), 3))
        for name, array in arrays.items()
    ]
    key_indent = b"\n" + _INDENT * 3
    objects = [
        b"\n"
        + _INDENT * 2
        + b"{"
        + b",".join(key_indent + key + b": " + values[item] for key, values in per_output)
        + b"\n"
        + _INDENT * 2
        + b"}"
        for item in range(batch_size)
    ]
    return b'{\n    "predictions": [' + b",".join(objects) + b"\n    ]\n}"


def _columnar_value(name: str, array: np.ndarray, dtype: int, depth: int) -> bytes:
    tokens = _leaf_tokens(name, array, dtype, depth + array.ndim)
    if array.ndim == 0:
        return tokens[0]
    return _nest(tokens, array.shape, depth, False)


def _columnar_format_json(arrays: dict[str, np.ndarray], output_dtypes: Mapping[str, int]) -> bytes:
    if len(arrays) == 1:
        ((name, array),) = arrays.items()
        value = _columnar_value(name, array, _output_dtype(name, array, output_dtypes), 1)
        return b'{\n    "outputs": ' + value + b"\n}"
    members = [
        b"\n"
        + _INDENT * 2
        + _json_str(name)
        + b": "
        + _columnar_value(name, array, _output_dtype(name, array, output_dtypes), 2)
        for name, array in arrays.items()
    ]
    return b'{\n    "outputs": {' + b",".join(members) + b"\n    }\n}"


# --------------------------------------------------------------------------------------------------
# Classify / Regress
# --------------------------------------------------------------------------------------------------

_FEATURE_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def _add_value_to_feature(val: Any, name: str, feature: Any) -> None:
    """AddValueToFeature: JSON scalar -> tf.train.Feature value, one kind per feature."""
    kind = feature.WhichOneof("kind")

    def require(wanted: str) -> None:
        if kind is not None and kind != wanted:
            raise _invalid(
                f"Unexpected element type in feature: {name} expecting type: {_FEATURE_KIND_NAMES[kind]}"
            )

    if val is None or type(val) is list or (type(val) is dict and not _is_b64_object(val)):
        raise _invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(val)}")
    if type(val) is bool:
        require("int64_list")
        feature.int64_list.value.append(1 if val else 0)
    elif type(val) is dict:
        require("bytes_list")
        feature.bytes_list.value.append(_decode_b64_object(val))
    elif type(val) is str:
        require("bytes_list")
        feature.bytes_list.value.append(_utf8(val))
    elif _is_rapidjson_double(val):
        require("float_list")
        if not _lossless(val, _FLOAT_MAX_EXACT_INT, _FLT_MAX):
            raise _lossy_error(val, "float")
        feature.float_list.value.append(float(val))
    else:
        require("int64_list")
        if val >= _INT64_LIMIT:
            raise _invalid(f"Feature: {name} has uint64 element. Only int64 is supported.")
        feature.int64_list.value.append(val)


def _fill_example(val: Any, example: Any) -> None:
    """MakeExampleFromJsonObject."""
    if type(val) is not dict:
        raise _invalid(f"Example must be JSON object but got JSON {_json_type(val)}")
    for name, content in val.items():
        feature = example.features.feature[name]
        for item in content if type(content) is list else (content,):
            _add_value_to_feature(item, name, feature)


def parse_classify_regress_request(body: bytes, method: str) -> tuple[str, input_pb2.Input]:
    """FillClassifyRegressRequestFromJson: returns (signature_name or "", Input proto)."""
    if method not in ("classify", "regress"):
        raise ValueError(f"method must be 'classify' or 'regress', got {method!r}")
    from tensorflow_serving.apis import input_pb2

    doc = _parse_document(body)
    signature_name = _signature_name(doc)
    request_input = input_pb2.Input()
    has_context = "context" in doc
    if has_context:
        _fill_example(doc["context"], request_input.example_list_with_context.context)
    if "examples" not in doc:
        # TF Serving says "classify" for both methods.
        raise _format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if type(examples) is not list:
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    target = request_input.example_list_with_context if has_context else request_input.example_list
    for example in examples:
        _fill_example(example, target.examples.add())
    return signature_name, request_input


def classify_response_json(result: classification_pb2.ClassificationResult) -> bytes:
    """``{"results": [[[label, score], ...], ...]}`` (MakeJsonFromClassificationResult)."""
    if not result.classifications:
        raise _invalid("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        pairs = [
            b"[" + _json_str(entry.label) + b", " + format_float(entry.score, DT_FLOAT).encode() + b"]"
            for entry in classifications.classes
        ]
        rows.append(b"[" + b", ".join(pairs) + b"]")
    return b'{\n    "results": [' + b", ".join(rows) + b"\n    ]\n}"


def regress_response_json(result: regression_pb2.RegressionResult) -> bytes:
    """``{"results": [v, ...]}`` (MakeJsonFromRegressionResult)."""
    if not result.regressions:
        raise _invalid("Cannot convert empty RegressionResults to JSON")
    values = b", ".join(format_float(entry.value, DT_FLOAT).encode() for entry in result.regressions)
    return b'{\n    "results": [' + values + b"]\n}"


# --------------------------------------------------------------------------------------------------
# Status and metadata (http_rest_api_util.cc::ToJsonString)
# --------------------------------------------------------------------------------------------------


def _message_to_json(message: Any, preserve_names: bool) -> str:
    from google.protobuf import json_format

    # protobuf's C++ printer with add_whitespace indents by one space.
    return json_format.MessageToJson(
        message,
        preserving_proto_field_name=preserve_names,
        indent=1,
        ensure_ascii=False,
        always_print_fields_with_no_presence=True,
    )


def status_json(response: get_model_status_pb2.GetModelStatusResponse) -> bytes:
    """The model status body: the GetModelStatusResponse as protobuf JSON, default fields printed.

    TF Serving always fills each version's ``status``, so an unset one is printed as OK here too."""
    printed = type(response)()
    printed.CopyFrom(response)
    for version_status in printed.model_version_status:
        version_status.status.SetInParent()
    return (_message_to_json(printed, preserve_names=False) + "\n").encode()


def metadata_json(
    model_name: str, version: int, signature_defs: Mapping[str, meta_graph_pb2.SignatureDef]
) -> bytes:
    """The metadata body: ``{"model_spec": ..., "metadata": {"signature_def": {"signature_def": ...}}}``
    assembled the way TF Serving concatenates it."""
    from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

    spec = model_pb2.ModelSpec(name=model_name)
    spec.version.value = version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    text = (
        '{\n"model_spec":' + _message_to_json(spec, preserve_names=True) + ",\n"
        '"metadata": {"signature_def": ' + _message_to_json(signature_map, preserve_names=True) + "}\n}\n"
    )
    return text.encode()
