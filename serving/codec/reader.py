"""JSON input with rapidjson's semantics: Python's json on the fast path, and an exact re-implementation
of rapidjson's Reader for errors (same texts and offsets) and the inputs where the two disagree.

Also the value checks every request body shares, predict as well as classify / regress (json_tensor.cc):
the ``signature_name`` key, errors echoing a JSON value, IsLosslessDecimal and ``{"b64": ...}`` objects."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from typing import Any

from serving.codec.errors import (
    _DBL_MAX,
    _DOUBLE_MAX_EXACT_INT,
    _INT64_LIMIT,
    _INT64_MIN,
    _UINT64_LIMIT,
    ServingError,
    _invalid,
)
from serving.codec.writer import _utf8, json_value_to_string

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
# Request values (json_tensor.cc), shared by predict and classify / regress
# --------------------------------------------------------------------------------------------------


def _format_error(doc: Any, text: str) -> ServingError:
    return _invalid(f"JSON Value: {json_value_to_string(doc)} {text}")


def _signature_name(doc: dict[str, Any]) -> str:
    name = doc.get("signature_name", "")
    if type(name) is not str:
        raise _format_error(doc, "not formatted correctly. 'signature_name' key must be a string value.")
    return name


def _lossy_error(val: Any, target: str) -> ServingError:
    return _invalid(
        f"Cannot convert JSON value: {json_value_to_string(val)} to {target} without loss of precision."
    )


def _lossless(val: Any, max_exact_int: int, max_value: float) -> bool:
    """IsLosslessDecimal<T>: integers must fit the mantissa, doubles the range; non-finite is fine."""
    if type(val) is int and _INT64_MIN <= val < _UINT64_LIMIT:
        return abs(val) <= max_exact_int
    number = float(val)
    return not math.isfinite(number) or abs(number) <= max_value


def _is_b64_object(val: Any) -> bool:
    return type(val) is dict and len(val) == 1 and type(val.get("b64")) is str


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
