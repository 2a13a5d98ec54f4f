"""Column values: what type each value is, and the lattice of types (tasks.data applies the same rules
to whole Arrow columns, tasks.data.profile profiles a whole source with them).

One set of rules for `kiln init` (which writes the schema), ingest (which writes the examples) and
the model server's CSV-shaped clients, so all read a value the same way:

* an empty field is a missing value, and so is `nan`/`NaN` (in any column, as pandas reads it);
* `true`/`false` (any case) are booleans, `[+-]digits` integers, other finite decimal numbers floats
  (`1.5`, `.5`, `2e-3`; ASCII digits only);
* a column's type is the narrowest that holds all its values: bool, int, float (ints widen to
  floats), else string.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from tasks.errors import BadInputError

ValueType = Literal["bool", "int", "float", "string", "image"]
# The types a text value can have; an image (decoded pixels, tasks.data.images) never comes from text.
VALUE_TYPES: tuple[ValueType, ...] = ("bool", "int", "float", "string")
# The same patterns as Arrow's kernels use on whole columns (tasks.data.values): ASCII digits only.
INT_PATTERN = r"^[+-]?[0-9]+$"
FLOAT_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_INT = re.compile(INT_PATTERN)
_FLOAT = re.compile(FLOAT_PATTERN)
_NAN = {"nan", "+nan", "-nan"}
_BOOLS = {"true": True, "false": False}
# Distinct values kept per column; beyond this a column is "high-cardinality" and only counted.
DISTINCT_CAP = 1000


class CsvError(BadInputError):
    """A CSV that cannot be read as a table; one line naming the file, line or column."""


def value_type(text: str) -> ValueType | None:
    """The type of one field (None = missing)."""
    text = text.strip()
    if not text:
        return None
    if text.lower() in _BOOLS:
        return "bool"
    if text.lower() in _NAN:
        return None
    if _INT.match(text):
        return "int"
    if _FLOAT.match(text) and math.isfinite(float(text)):
        return "float"
    return "string"


def widen(current: ValueType | None, new: ValueType | None) -> ValueType | None:
    """The narrowest type holding both."""
    if current is None or current == new:
        return new if current is None else current
    if new is None:
        return current
    if {current, new} == {"int", "float"}:
        return "float"
    return "string"


def holds(wider: ValueType, narrower: ValueType) -> bool:
    """Whether every value of type `narrower` can be stored as `wider` without loss."""
    return wider == narrower or (wider == "string" and narrower != "image") \
        or (wider == "float" and narrower in ("int", "bool")) or (wider == "int" and narrower == "bool")


def parse_value(text: str, as_type: ValueType) -> Any:
    """A field as a Python value of `as_type` (None when missing); the caller checked `holds`."""
    text = text.strip()
    kind = value_type(text)
    if kind is None:
        return None
    if as_type == "string":
        return text
    if kind == "bool":
        value = _BOOLS[text.lower()]
        return float(value) if as_type == "float" else int(value) if as_type == "int" else value
    if as_type == "int":
        return int(text)
    return float(text)


def preview(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"columns: {shown}, ..." if len(names) > limit else f"columns: {shown}"
