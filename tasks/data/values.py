"""kiln's value rules (`tasks.columns`) applied to whole Arrow arrays at once, in Arrow's C++ kernels.

Text (a CSV column, read as strings) is typed exactly as `tasks.columns.value_type` types one field:
empty or `nan` is missing, `true`/`false` in any case is a bool, `[+-]digits` an int, a finite decimal
number a float, anything else a string. Columns that arrive typed (Parquet, JSON lines) keep their
type: Arrow integers are ints, floating and decimal numbers floats (NaN is missing), and dates, times
and other scalars their text.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.columns import FLOAT_PATTERN, INT_PATTERN, ValueType
from tasks.errors import BadInputError

# Missing text: empty, or nan in any case with an optional sign (what float() reads as NaN).
_MISSING = pa.array(["", *(sign + "".join(c) for sign in ("", "+", "-") for c in itertools.product("nN", "aA", "nN"))])
_BOOLS = ["true", "false"]


class ValueMismatch(BadInputError):
    """A value that does not fit its column's type; one line naming the file, column and row."""


@dataclass(frozen=True)
class Kinds:
    """How many values of each kind one array holds."""

    missing: int = 0
    bool: int = 0
    int: int = 0
    float: int = 0
    string: int = 0
    image: int = 0  # decoded images (tasks.data.images): only ever a column of their own

    def merged(self, other: Kinds) -> Kinds:
        return Kinds(*(a + b for a, b in zip(self.counts(), other.counts(), strict=True)))

    def counts(self) -> tuple[int, int, int, int, int, int]:
        return self.missing, self.bool, self.int, self.float, self.string, self.image

    @property
    def value_type(self) -> ValueType | None:
        """The narrowest type holding every value (`tasks.columns.widen` over all of them)."""
        seen = [kind for kind, count in zip(("bool", "int", "float", "string", "image"), self.counts()[1:],
                                            strict=True) if count]
        if not seen:
            return None
        if len(seen) == 1:
            return seen[0]  # type: ignore[return-value]
        return "float" if set(seen) == {"int", "float"} else "string"


def stored_type(arrow_type: pa.DataType) -> ValueType | None:
    """The kiln type of a typed Arrow column; None for text, which is typed value by value."""
    if pa.types.is_boolean(arrow_type):
        return "bool"
    if pa.types.is_integer(arrow_type):
        return "int"
    if pa.types.is_floating(arrow_type) or pa.types.is_decimal(arrow_type):
        return "float"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_null(arrow_type):
        return None
    if pa.types.is_fixed_size_binary(arrow_type):
        return "image"  # the pixels tasks.data.images decoded
    if pa.types.is_nested(arrow_type) or pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        raise TypeError(str(arrow_type))
    return "string"  # dates, times, timestamps, durations: their text


@dataclass(frozen=True)
class Classified:
    """One text column's kinds, its missing mask and its numbers (float64, null where not a number)."""

    kinds: Kinds
    missing: pa.Array
    numbers: pa.Array | None


def _count(mask: pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)


def _integral(text: pa.Array) -> pa.Array:
    """Of text that parses as a finite number: written as an integer (no point, no exponent)."""
    return pc.invert(pc.or_(pc.match_substring(text, "."), pc.match_substring(text, "e", ignore_case=True)))


def classify(text: pa.Array, known: ValueType | None = None) -> Classified:
    """Type every value of stripped text. A column whose values all parse as finite numbers is typed by
    Arrow's number parsers; only a column that does not takes the regular expressions. `known` is the
    column's type so far: for "string" (nothing narrows it) only the missing values are counted, for
    "float" the numbers are all counted as floats (the column's type is the same either way)."""
    text = text.fill_null("")
    if known == "string":
        missing = pc.is_in(text, value_set=_MISSING)
        absent = _count(missing)
        return Classified(Kinds(missing=absent, string=len(text) - absent), missing, None)
    parsed = _parse_numbers(text)
    if parsed is not None:
        numbers, missing = parsed
        absent = _count(missing)
        present = len(text) - absent
        # Integers or floats? Arrow's integer parser settles it when all are integers (it also reads hex, but
        # hex failed the float parse); otherwise one substring scan counts them, unless the column is already
        # known to hold floats, which no count of either can change.
        if known == "float":
            integers = 0
        else:
            try:
                pc.cast(pc.if_else(missing, pa.scalar("0"), text), pa.int64())
                integers = present
            except pa.ArrowInvalid:
                integers = _count(pc.and_(_integral(text), pc.invert(missing)))
        return Classified(Kinds(missing=absent, int=integers, float=present - integers), missing, numbers)
    missing = pc.is_in(text, value_set=_MISSING)
    return _classify_slowly(text, missing, _count(missing))


def _parse_numbers(text: pa.Array) -> tuple[pa.Array, pa.Array] | None:
    """(float64 values, null where missing; the missing mask) when every value is empty, `nan` in any case or
    a finite number (Arrow's parser reads every spelling of nan as NaN, kiln's missing values exactly); else None."""
    empty = pc.equal(text, "")
    try:
        numbers = pc.cast(pc.if_else(empty, pa.scalar("0"), text), pa.float64())
    except pa.ArrowInvalid:
        return None
    missing = pc.or_(empty, pc.is_nan(numbers))
    if not pc.all(pc.or_(missing, pc.is_finite(numbers))).as_py():
        return None
    return pc.if_else(missing, pa.nulls(len(text), pa.float64()), numbers), missing


def _classify_slowly(text: pa.Array, missing: pa.Array, absent: int) -> Classified:
    boolean = pc.is_in(pc.utf8_lower(text), value_set=pa.array(_BOOLS))
    integer = pc.match_substring_regex(text, INT_PATTERN)
    number = pc.and_not(pc.match_substring_regex(text, FLOAT_PATTERN), integer)
    numeric = pc.or_(integer, number)
    # A float that overflows (1e999) is not finite: a string, as float() would make it inf.
    parsed = pc.cast(pc.if_else(numeric, text, pa.scalar("0")), pa.float64())
    number = pc.and_(number, pc.is_finite(parsed))
    numeric = pc.or_(integer, number)
    string = pc.invert(pc.or_(pc.or_(missing, boolean), numeric))
    kinds = Kinds(missing=absent, bool=_count(boolean), int=_count(integer), float=_count(number), string=_count(string))
    return Classified(kinds, missing, pc.if_else(numeric, parsed, pa.nulls(len(text), pa.float64())))


def kinds(array: pa.Array) -> Kinds:
    """Count the values of each kind (`array` is stripped text or a typed column)."""
    typed_as = stored_type(array.type)
    if typed_as is None and not pa.types.is_null(array.type):
        return classify(array).kinds
    absent = _count(missing_mask(array))
    return Kinds(missing=absent, **({typed_as: len(array) - absent} if typed_as else {}))


def missing_mask(array: pa.Array) -> pa.Array:
    """True where a value is missing: null, NaN, or (in text) empty or `nan`."""
    if pa.types.is_floating(array.type):
        return pc.fill_null(pc.or_kleene(pc.is_null(array), pc.is_nan(array)), True)
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        return pc.is_in(array.fill_null(""), value_set=_MISSING)
    return pc.is_null(array)


def strip(array: pa.Array) -> pa.Array:
    """Text without surrounding whitespace (CSV fields are compared stripped)."""
    return pc.utf8_trim_whitespace(array)


def as_text(array: pa.Array) -> pa.Array:
    """Every value as the text a CSV would hold (missing: empty), e.g. for hashing a row."""
    if pa.types.is_boolean(array.type):
        array = pc.if_else(array, "true", "false")
    return pc.fill_null(pc.cast(array, pa.string()), "")


_ARROW = {"bool": pa.bool_(), "int": pa.int64(), "float": pa.float64(), "string": pa.string()}


def typed(array: pa.Array, value_type: ValueType, where: str, first_row: int) -> pa.Array:
    """The column as `value_type`, missing values null; `where` and `first_row` (1-based, of the
    array's first value) name a value that does not fit."""
    if value_type == "image" or stored_type(array.type) == "image":
        if stored_type(array.type) != value_type:
            raise ValueMismatch(f"{where}: images and other values in one column")
        return array
    target = _ARROW[value_type]
    if stored_type(array.type) is not None or pa.types.is_null(array.type):
        missing = missing_mask(array)
        source = stored_type(array.type) if not pa.types.is_null(array.type) else value_type
        if source == value_type or (value_type == "float" and source in ("int", "bool")) \
                or (value_type == "int" and source == "bool") or value_type == "string":
            values = pc.cast(as_text(array), target) if value_type == "string" else pc.cast(array, target)
            return pc.if_else(missing, pa.nulls(len(array), target), values)
        _refuse(array, pc.invert(missing), value_type, where, first_row)
    text = array.fill_null("")
    fast = _typed_numbers(text, value_type) if value_type in ("int", "float") else None
    if fast is not None:
        return fast
    missing = pc.is_in(text, value_set=_MISSING)
    if value_type == "string":
        return pc.if_else(missing, pa.nulls(len(array), target), text)
    if value_type == "bool":
        lower = pc.utf8_lower(text)
        fits = pc.or_(missing, pc.is_in(lower, value_set=pa.array(_BOOLS)))
        if not pc.all(fits).as_py():
            _refuse(text, pc.invert(fits), value_type, where, first_row)
        return pc.if_else(missing, pa.nulls(len(array), target), pc.equal(lower, "true"))
    found = classify(text)
    if found.kinds.string or (value_type == "int" and found.kinds.float):
        _refuse(text, _misfits(text, found, value_type), value_type, where, first_row)
    if found.kinds.bool:  # true/false in a number column: 1/0
        lower = pc.utf8_lower(text)
        text = pc.if_else(pc.equal(lower, "true"), pa.scalar("1"), pc.if_else(pc.equal(lower, "false"), pa.scalar("0"), text))
    text = pc.replace_substring_regex(text, r"^\+", "")  # Arrow's integer parser takes no plus sign
    if value_type == "float":
        values = pc.cast(pc.if_else(found.missing, pa.scalar("0"), text), target)
    else:
        try:
            values = pc.cast(pc.if_else(found.missing, pa.scalar("0"), text), target)
        except pa.ArrowInvalid:  # an integer beyond int64
            raise ValueMismatch(f"{where}: a value beyond the 64-bit integer range (store the column as float or "
                                f"string)") from None
    return pc.if_else(found.missing, pa.nulls(len(array), target), values)


def _typed_numbers(text: pa.Array, value_type: ValueType) -> pa.Array | None:
    """The common case in one parse: every value missing or a plain number of the column's type (else None:
    the careful path types value by value and names a misfit)."""
    parsed = _parse_numbers(text)
    if parsed is None:
        return None
    numbers, missing = parsed
    if value_type == "float":
        return numbers
    try:  # text that parsed as a float holds no hex (0x10), which Arrow's integer parser would read
        return pc.if_else(missing, pa.nulls(len(text), pa.int64()),
                          pc.cast(pc.if_else(missing, pa.scalar("0"), text), pa.int64()))
    except pa.ArrowInvalid:
        return None


def _misfits(text: pa.Array, found: Classified, value_type: ValueType) -> pa.Array:
    """Where a value is neither missing nor of a kind `value_type` holds."""
    fits = pc.or_(found.missing, pc.is_in(pc.utf8_lower(text), value_set=pa.array(_BOOLS)))
    numbers = pc.is_valid(found.numbers) if found.numbers is not None else pa.array([False] * len(text))
    if value_type == "int":
        numbers = pc.and_(numbers, _integral(text))
    return pc.invert(pc.or_(fits, numbers))


def _refuse(array: pa.Array, bad: pa.Array, value_type: ValueType, where: str, first_row: int) -> None:
    index = int(np.flatnonzero(bad.to_numpy(zero_copy_only=False))[0])
    raise ValueMismatch(f"{where} row {first_row + index}: value {array[index].as_py()!r} is not a {value_type}")
