"""JSON output the way TF Serving writes it: ``%g`` float text (WriteDecimal) and rapidjson's Writer /
PrettyWriter, for response bodies, error bodies and values echoed in error messages."""

from __future__ import annotations

import contextlib
import math
import re
import struct
from typing import Any

import numpy as np

from serving.codec.errors import (
    _INT64_MIN,
    _RAPIDJSON_FLOAT_RANGE,
    _UINT64_LIMIT,
    DT_DOUBLE,
    DT_FLOAT,
)

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


# Measured on the serving machine: the vectorised path wins from about 16-32 values.
_VECTOR_MIN_SIZE = 24


def format_floats(values: np.ndarray, dtype: int) -> list[str]:
    """``format_float`` for a whole array at once, with the same text for every element.

    One ``%`` formatting call prints every value with ``%g``; numpy parses the texts back and finds the
    (rare) values that do not round-trip, which alone are printed again with ``%.9g`` / ``%.17g``. Zeros and
    non-finite values take ``format_float`` itself."""
    values = np.asarray(values).reshape(-1)
    count = values.size
    if count < _VECTOR_MIN_SIZE:  # numpy's fixed cost per call outweighs the per-value work below this
        return [format_float(value, dtype) for value in values.tolist()]
    # float32 overflow becomes inf (printed "Infinity", as format_float does); NaN payloads cast quietly.
    with np.errstate(over="ignore", invalid="ignore"):
        wide = values.astype(np.float32 if dtype == DT_FLOAT else np.float64, copy=False)
        doubles = wide.astype(np.float64).tolist()
    texts = ("%g\n" * count % tuple(doubles)).split("\n")[:count]
    finite = np.isfinite(wide)
    with np.errstate(invalid="ignore"):
        read_back = np.array(texts, dtype=np.float64).astype(wide.dtype)
    wider = "%.9g" if dtype == DT_FLOAT else "%.17g"
    for index in np.flatnonzero(finite & (read_back != wide)).tolist():
        texts[index] = wider % doubles[index]
    texts = [text if "." in text or "e" in text else text + ".0" for text in texts]
    for index in np.flatnonzero(~finite | (wide == 0)).tolist():
        texts[index] = format_float(doubles[index], dtype)
    return texts


def _format_float_tokens(values: np.ndarray, dtype: int) -> list[bytes]:
    return [text.encode() for text in format_floats(values, dtype)]


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
