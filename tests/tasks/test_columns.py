"""CSV columns: the type of one value, the type lattice, typed parsing, a column's streamed profile,
and one-line `CsvError`s naming the file for every CSV that cannot be read as a table."""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import pyarrow as pa
import pytest

from tasks.columns import DISTINCT_CAP, VALUE_TYPES, CsvError, holds, parse_value, value_type, widen
from tasks.data.profile import ColumnProfile
from tasks.data.profile import profile_source as profile_csv
from tasks.data.values import strip


def profile_of(*texts: str) -> ColumnProfile:
    """A column profiled as a CSV's is: in batches of stripped text (two, to exercise the merge)."""
    column = ColumnProfile("c")
    half = len(texts) // 2
    for part in (texts[:half], texts[half:]):
        if part:
            column.update(strip(pa.array(list(part), pa.string())))
    return column


def write_csv(tmp_path, body: str | bytes, name: str = "data.csv"):
    path = tmp_path / name
    if isinstance(body, bytes):
        path.write_bytes(body)
    else:
        path.write_text(body)
    return path


def assert_one_line_naming(exc: pytest.ExceptionInfo[CsvError], path) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message


# --- value_type ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\t", "nan", "NaN", " NAN "])
def test_empty_whitespace_and_nan_are_missing(text):
    assert value_type(text) is None


@pytest.mark.parametrize("text", ["true", "FALSE", "True", " false "])
def test_true_and_false_in_any_case_are_bool(text):
    assert value_type(text) == "bool"


@pytest.mark.parametrize("text", ["0", "42", "-7", "+7", "007", " 12 "])
def test_digits_with_an_optional_sign_are_int(text):
    assert value_type(text) == "int"


@pytest.mark.parametrize("text", ["1.5", "-0.25", "+3.", ".5", "1e5", "2.5E-3"])
def test_other_finite_numbers_are_float(text):
    assert value_type(text) == "float"


@pytest.mark.parametrize("text", ["inf", "-inf", "Infinity", "1e999"])
def test_infinite_numbers_are_strings(text):
    assert value_type(text) == "string"


@pytest.mark.parametrize("text", ["abc", "1.2.3", "yes", "12abc", "0x10"])
def test_text_is_string(text):
    assert value_type(text) == "string"


# --- widen and holds -----------------------------------------------------------------------------


@pytest.mark.parametrize("current, new, wider", [
    ("int", "float", "float"),
    ("float", "int", "float"),
    ("bool", "int", "string"),
    ("int", "bool", "string"),
    ("bool", "float", "string"),
    ("int", "string", "string"),
    ("string", "bool", "string"),
    ("float", "string", "string"),
])
def test_widen_gives_the_narrowest_type_holding_both(current, new, wider):
    assert widen(current, new) == wider


@pytest.mark.parametrize("kind", VALUE_TYPES)
def test_widen_of_a_type_with_itself_is_the_type(kind):
    assert widen(kind, kind) == kind


@pytest.mark.parametrize("kind", [*VALUE_TYPES, None])
def test_widen_ignores_missing(kind):
    assert widen(None, kind) == kind
    assert widen(kind, None) == kind


@pytest.mark.parametrize("wider, narrower", [
    ("string", "bool"), ("string", "int"), ("string", "float"),
    ("float", "int"), ("float", "bool"), ("int", "bool"),
    *[(kind, kind) for kind in VALUE_TYPES],
])
def test_holds_without_loss(wider, narrower):
    assert holds(wider, narrower)


@pytest.mark.parametrize("wider, narrower", [
    ("int", "float"), ("bool", "int"), ("bool", "float"),
    ("float", "string"), ("int", "string"), ("bool", "string"),
])
def test_does_not_hold_with_loss(wider, narrower):
    assert not holds(wider, narrower)


# --- parse_value ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, as_type, value", [
    ("true", "bool", True),
    ("FALSE", "bool", False),
    ("true", "int", 1),
    ("False", "int", 0),
    ("TRUE", "float", 1.0),
    ("false", "float", 0.0),
    ("-12", "int", -12),
    ("+3", "int", 3),
    ("-12", "float", -12.0),
    ("2.5", "float", 2.5),
    (" 4 ", "string", "4"),
    ("true", "string", "true"),
    ("abc", "string", "abc"),
])
def test_parse_value_as_each_type(text, as_type, value):
    parsed = parse_value(text, as_type)
    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize("as_type", VALUE_TYPES)
@pytest.mark.parametrize("text", ["", "   "])
def test_parse_value_of_an_empty_field_is_none(text, as_type):
    assert parse_value(text, as_type) is None


@pytest.mark.parametrize("as_type", ["bool", "int", "float"])
def test_parse_value_of_nan_in_a_non_string_column_is_none(as_type):
    assert parse_value("NaN", as_type) is None


# --- ColumnProfile -------------------------------------------------------------------------------


def test_profile_counts_missing_and_present_values():
    column = profile_of("1", "", "2", "nan", " ", "3")
    assert (column.present, column.missing) == (3, 3)
    assert column.type == "int"


def test_profile_type_widens_over_the_column():
    assert profile_of("1", "2.5").type == "float"
    assert profile_of("1", "true").type == "string"
    assert profile_of("", "").type is None


def test_distinct_counts_typed_values():
    column = profile_of("TRUE", "true", "True", "false")
    assert column.type == "bool"
    assert column.distinct == 2
    assert column.typed_values() == [False, True]


def test_typed_values_of_ints_sort_numerically():
    assert profile_of("10", "9", "-1", "9").typed_values() == [-1, 9, 10]


def test_distinct_up_to_the_cap_is_counted():
    column = profile_of(*(str(i) for i in range(DISTINCT_CAP)))
    assert not column.capped
    assert column.distinct == DISTINCT_CAP


def test_distinct_beyond_the_cap_is_unknown():
    column = profile_of(*(str(i) for i in range(DISTINCT_CAP + 1)))
    assert column.capped
    assert column.distinct is None


def test_past_the_cap_a_column_has_no_distinct_count_and_no_more_than_cap_values():
    column = profile_of(*(str(i) for i in range(DISTINCT_CAP + 5)), "0", "0")
    assert column.capped and column.distinct is None
    assert len(column.values) <= DISTINCT_CAP
    assert column.numbers == DISTINCT_CAP + 7, "the moments still count every value"


def test_mean_std_and_range_equal_numpys():
    rng = random.Random(3)
    numbers = [rng.uniform(-50, 150) for _ in range(500)] + [rng.randint(-5, 5) for _ in range(100)]
    column = profile_of(*(repr(n) for n in numbers), "", "nan")
    assert column.numbers == len(numbers)
    assert column.mean == pytest.approx(np.mean(numbers), rel=1e-12)
    assert column.std == pytest.approx(np.std(numbers), rel=1e-9)
    assert (column.minimum, column.maximum) == (min(numbers), max(numbers))


def test_std_without_numbers_is_nan():
    assert math.isnan(profile_of("a", "b").std)
    assert math.isnan(profile_of().std)


def test_profile_agrees_with_parse_value_on_missing_values():
    texts = ["a", "nan", "b", ""]
    column = profile_of(*texts)
    assert column.type == "string"
    assert column.missing == sum(parse_value(t, column.type) is None for t in texts)


# --- profile_csv ---------------------------------------------------------------------------------


def test_profile_csv_types_each_column(tmp_path):
    path = write_csv(tmp_path, "n,x,flag,city,empty\n1,1.5,true,Oslo,\n2,,FALSE,Rome,\n3,2,true,,\n")
    profile = profile_csv(str(path))
    assert profile.header == ["n", "x", "flag", "city", "empty"]
    assert profile.rows == 3
    assert {name: c.type for name, c in profile.columns.items()} == {
        "n": "int", "x": "float", "flag": "bool", "city": "string", "empty": None}
    assert profile.columns["x"].missing == 1
    assert profile.columns["empty"].missing == 3


def test_profile_csv_sha256_is_the_files(tmp_path):
    body = "a,b\n" + "".join(f"{i},{i * 0.5}\n" for i in range(5000))
    path = write_csv(tmp_path, body)
    assert profile_csv(str(path)).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_profile_csv_reads_past_a_byte_order_mark(tmp_path):
    path = write_csv(tmp_path, "\ufeffa,b\n1,x\n".encode())
    profile = profile_csv(str(path))
    assert profile.header == ["a", "b"]
    assert profile.columns["a"].type == "int"
    assert profile.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_profile_csv_strips_header_names_and_skips_blank_lines(tmp_path):
    path = write_csv(tmp_path, " a , b\n1,2\n\n3,4\n")
    profile = profile_csv(str(path))
    assert profile.header == ["a", "b"]
    assert profile.rows == 2


# --- bad CSVs ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(CsvError, match="data source not found") as exc:
        profile_csv(str(path))
    assert_one_line_naming(exc, path)


def test_an_empty_folder_has_no_data(tmp_path):
    with pytest.raises(CsvError, match="no data files there") as exc:
        profile_csv(str(tmp_path))
    assert_one_line_naming(exc, tmp_path)


@pytest.mark.parametrize("body", ["", "\n\n", ",,\n"])
def test_empty_file(tmp_path, body):
    path = write_csv(tmp_path, body)
    with pytest.raises(CsvError, match="empty") as exc:
        profile_csv(str(path))
    assert_one_line_naming(exc, path)


def test_header_only(tmp_path):
    path = write_csv(tmp_path, "a,b\n")
    with pytest.raises(CsvError, match="header but no data rows") as exc:
        profile_csv(str(path))
    assert_one_line_naming(exc, path)


@pytest.mark.parametrize("header, named", [("a,b,a", "'a'"), ("a, b,b ", "'b'"), ("a,,b", "''")])
def test_duplicate_or_empty_header_names(tmp_path, header, named):
    path = write_csv(tmp_path, f"{header}\n1,2,3\n")
    with pytest.raises(CsvError, match="duplicate or empty column names") as exc:
        profile_csv(str(path))
    assert_one_line_naming(exc, path)
    assert named in str(exc.value)


@pytest.mark.parametrize("short_row", ["1,2", "1,2,3,4"])
def test_a_row_of_the_wrong_width_names_its_line(tmp_path, short_row):
    path = write_csv(tmp_path, f"a,b,c\n1,2,3\n\n{short_row}\n4,5,6\n")
    with pytest.raises(CsvError, match=r"line 4: \d fields, the header has 3") as exc:
        profile_csv(str(path))
    assert_one_line_naming(exc, path)


def test_non_utf8_bytes(tmp_path):
    path = write_csv(tmp_path, b"a,b\n\xff\xfe,1\n")
    with pytest.raises(CsvError, match="not UTF-8") as exc:
        profile_csv(str(path))
    assert_one_line_naming(exc, path)


def test_non_utf8_bytes_after_the_first_block(tmp_path):
    path = write_csv(tmp_path, b"a,b\n" + b"1,2\n" * 20_000 + b"caf\xe9,3\n")
    with pytest.raises(CsvError, match="not UTF-8") as exc:
        profile_csv(str(path))
    assert_one_line_naming(exc, path)
