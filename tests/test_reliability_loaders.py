"""Bad input to every loader: a clear ``file:line: reason`` (or a count under ``skip_bad``), fast.

Issue 12, items 3 (linear-time parsing), 5 (timestamps and ids) and 8 (a missing ``--source``).
Each test writes a small file in the real format to ``tmp_path`` (RecBole atomic files, Amazon
2014/2018/2023 CSV and JSON lines, M2 CSV), or copies a fixture and breaks one line of it.

Every load runs under :func:`hang_guard`: the right answer takes milliseconds, so a parse that
backtracks (the old M2 pattern took minutes on one 40-id row) fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentrec.core.errors import UsageError
from agentrec.data.amazon import load_amazon2014, load_amazon2018, load_amazon2023
from agentrec.data.m2 import load_m2, parse_prev_items
from agentrec.data.raw import BadValue, DataFormatError, NotFoundError, clean_id, whole_seconds
from agentrec.data.recbole_atomic import load_recbole

GUARD_S = 5.0
BOM = b"\xef\xbb\xbf"
INTER_HEADER = b"user_id:token\titem_id:token\ttimestamp:float\n"


@contextlib.contextmanager
def hang_guard(seconds: float = GUARD_S):
    """Fail (not hang) when the block runs longer than ``seconds``; the regex engine checks signals."""

    def too_slow(*_):
        raise AssertionError(f"took longer than {seconds} s: not linear time")

    started = time.perf_counter()
    if hasattr(signal, "setitimer"):
        previous = signal.signal(signal.SIGALRM, too_slow)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - started < seconds


def expect_bad_line(load, path: Path, line: int, reason: str):
    """``load(skip_bad=False)`` raises naming ``path:line`` and ``reason``; with ``skip_bad`` the
    line is counted once. Returns the data loaded with ``skip_bad``."""
    with hang_guard(), pytest.raises(DataFormatError) as caught:
        load(skip_bad=False)
    message = str(caught.value)
    assert f"{path.name}:{line}: " in message and reason in message, message
    assert caught.value.line == line and "--skip-bad" in message
    with hang_guard():
        raw = load(skip_bad=True)
    assert raw.report.counts["bad_lines"] == 1, raw.report.counts
    assert raw.report.bad_lines[0].startswith(f"{path}:{line}: ")
    return raw


# --------------------------------------------------------------------------------------------
# Writers for the real formats


def recbole_folder(tmp_path: Path, inter: bytes, item: bytes | None = None, name: str = "d") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}.inter").write_bytes(inter)
    if item is not None:
        (folder / f"{name}.item").write_bytes(item)
    return folder


def inter_rows(*rows: bytes) -> bytes:
    """A ``.inter`` file: the header, two good rows (u/1 at 5, u/2 at 6), then ``rows``."""
    return INTER_HEADER + b"u\t1\t5\nu\t2\t6\n" + b"".join(row + b"\n" for row in rows)


def m2_folder(fixtures: Path, tmp_path: Path, *, sessions: bytes | None = None, products: bytes | None = None) -> Path:
    folder = tmp_path / "m2"
    shutil.copytree(fixtures / "m2", folder)
    if sessions is not None:
        (folder / "sessions_train.csv").write_bytes(sessions)
    if products is not None:
        (folder / "products_train.csv").write_bytes(products)
    return folder


def m2_with_row(fixtures: Path, tmp_path: Path, row: bytes) -> tuple[Path, int]:
    """The M2 fixture with one more session record at the end; (folder, the line it starts on)."""
    text = (fixtures / "m2" / "sessions_train.csv").read_bytes()
    line = text.count(b"\n") + 1
    return m2_folder(fixtures, tmp_path, sessions=text + row + b"\n"), line


def write(path: Path, data: bytes | str) -> Path:
    data = data.encode() if isinstance(data, str) else data
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def review_2023(user="u1", item="A1", timestamp=1_600_000_000_000, **extra) -> str:
    return json.dumps({"user_id": user, "parent_asin": item, "timestamp": timestamp, **extra})


def reviews_2023(tmp_path: Path, *lines: str) -> Path:
    """Two good reviews, then ``lines``."""
    good = [review_2023("u1", "A1"), review_2023("u1", "A2", 1_600_000_001_000)]
    return write(tmp_path / "All_Beauty.jsonl", "\n".join(good + list(lines)) + "\n")


def meta_2023(tmp_path: Path, *lines: str) -> Path:
    good = json.dumps({"parent_asin": "A1", "title": "Good Cream", "categories": ["Beauty"]})
    return write(tmp_path / "meta_All_Beauty.jsonl", "\n".join([good, *lines]) + "\n")


# --------------------------------------------------------------------------------------------
# Item 3: linear-time parsing


def ids(n: int) -> list[str]:
    return [f"'B{i:09d}'" for i in range(n)]


def numpy_wrapped(tokens: list[str], per_line: int = 5) -> str:
    """How numpy prints a long array: wrapped every few ids, continuation lines indented."""
    lines = [" ".join(tokens[i : i + per_line]) for i in range(0, len(tokens), per_line)]
    return "\n ".join(lines)


MALFORMED_ARRAYS = {
    "lost its ]": (lambda t: "[" + numpy_wrapped(t), "has no closing ']'"),
    "lost its [": (lambda t: numpy_wrapped(t) + "]", "does not start with '['"),
    "lost a closing quote": (lambda t: "[" + numpy_wrapped(t)[:-1] + "]", "has a quote that is not closed"),
    "junk between ids": (lambda t: "[" + numpy_wrapped(t[:-1]) + " junk " + t[-1] + "]", "has 'junk' outside quotes"),
    "an unquoted id": (lambda t: "[" + numpy_wrapped(t) + " B0UNQUOTED]", "has 'B0UNQUOTED' outside quotes"),
    "numpy's ...": (lambda t: "[" + " ".join(t[:3]) + " ... " + " ".join(t[-3:]) + "]", "holds '...': numpy shortened"),
}


@pytest.mark.parametrize("n", [40, 1000, 5000])
@pytest.mark.parametrize("damage", MALFORMED_ARRAYS)
def test_m2_malformed_prev_items_are_refused_fast(fixtures, tmp_path, damage, n):
    make, reason = MALFORMED_ARRAYS[damage]
    text = make(ids(n))
    with hang_guard():
        assert parse_prev_items(text) is None
    quoted = '"' + text.replace('"', '""') + '"'
    folder, line = m2_with_row(fixtures, tmp_path, f"{quoted},B0BFDL54Y7,UK".encode())
    raw = expect_bad_line(lambda **kw: load_m2(folder, **kw), folder / "sessions_train.csv", line,
                          f"is not a printed array of quoted ids: it {reason}")
    assert len(raw.events) == 36  # the fixture's events, nothing of the bad row


@pytest.mark.parametrize("n", [40, 100_000])
def test_m2_long_good_arrays_parse_in_linear_time(n):
    tokens = ids(n)
    with hang_guard():
        assert parse_prev_items("[" + numpy_wrapped(tokens) + "]") == [t.strip("'") for t in tokens]
        assert parse_prev_items("[" + ", ".join(tokens) + "]") == [t.strip("'") for t in tokens]


def test_amazon_html_and_price_fields_are_parsed_in_linear_time(tmp_path):
    # '<' without '>' and a price of spaces made the old patterns quadratic (a minute at 100 KB)
    lines = [json.dumps({"asin": "A1", "title": "<" * 200_000 + "b>Cream", "price": " " * 200_000 + "x"}),
             json.dumps({"asin": "A2", "title": "<i>" * 50_000 + "Soap", "price": "$" + " " * 200_000 + "5.50"})]
    meta = write(tmp_path / "meta_All_Beauty.json", "\n".join(lines) + "\n")
    source = write(tmp_path / "All_Beauty.csv", "A1,u1,5.0,100\nA2,u1,5.0,200\n")
    with hang_guard():
        items = load_amazon2018(source, meta=meta).items.set_index("item")
    assert items.loc["A1", "title"].endswith("Cream") and items.loc["A2", "title"] == "Soap"
    assert items["price"].isna().tolist() == [True, False] and items.loc["A2", "price"] == 5.5


@pytest.mark.parametrize(
    "line, reason",
    [
        ("[" * 100_000, "not a valid record"),  # nesting: RecursionError or the parser's own limit
        ('{"user_id": "' + "u" * 1_000_000, "not a valid record"),  # an unterminated 1 MB string
        (review_2023(timestamp="9" * 100_000), "outside the int64 range"),  # no int() of 100k digits
        (review_2023(timestamp="1" * 50_000 + "x"), "is not a whole number"),
    ],
    ids=["nested", "unterminated", "100k digits", "digits then junk"],
)
def test_amazon_pathological_lines_fail_fast(tmp_path, line, reason):
    source = reviews_2023(tmp_path, line)
    raw = expect_bad_line(lambda **kw: load_amazon2023(source, **kw), source, 3, reason)
    assert len(raw.events) == 2


def test_recbole_huge_junk_field_fails_fast_with_a_short_message(tmp_path):
    folder = recbole_folder(tmp_path, inter_rows(b"u\t3\t" + b"7" * 1_000_000 + b"x"))
    with hang_guard(), pytest.raises(DataFormatError, match=r"d\.inter:4: timestamp '7777.*\.\.\. is not a number") as caught:
        load_recbole(folder)
    assert len(str(caught.value)) < 300


# --------------------------------------------------------------------------------------------
# Item 5: timestamps


BAD_TIMES = {
    "1e30": "is outside the int64 range",
    "-1e30": "is outside the int64 range",
    "9223372036854775808": "is outside the int64 range",  # int64 max + 1
    "-9223372036854775809": "is outside the int64 range",
    "1e999": "is outside the int64 range",  # float('1e999') is inf
    "inf": "is not",
    "-Infinity": "is not",
    "nan": "is not",
    "NaN": "is not",
    "0x10": "is not",
    "1_000": "is not",  # Python's int() and float() would accept it
    "12abc": "is not",
    "１２３": "is not",  # full-width digits: int() would accept them
    "": "is not",
}


@pytest.mark.parametrize("value", BAD_TIMES)
def test_recbole_bad_timestamps(tmp_path, value):
    folder = recbole_folder(tmp_path, inter_rows(b"u\t3\t" + value.encode()))
    raw = expect_bad_line(lambda **kw: load_recbole(folder, **kw), folder / "d.inter", 4,
                          f"timestamp {value!r} {BAD_TIMES[value]}")
    assert raw.events["timestamp"].tolist() == [5, 6]  # never -9.2e18 at the front of the history


@pytest.mark.parametrize("value", BAD_TIMES)
@pytest.mark.parametrize("release", ["2014", "2018"])
def test_amazon_ratings_csv_bad_timestamps(tmp_path, release, value):
    loader = {"2014": load_amazon2014, "2018": load_amazon2018}[release]
    source = write(tmp_path / "ratings_Beauty.csv", f"u1,A1,5.0,100\nu1,A2,5.0,200\nu1,A3,5.0,{value}\n")
    raw = expect_bad_line(lambda **kw: loader(source, **kw), source, 3, f"timestamp {value!r} {BAD_TIMES[value]}")
    assert raw.events["timestamp"].tolist() == [100, 200]


# JSON values where a time belongs: (JSON text, reason). json.loads reads NaN and Infinity.
BAD_JSON_TIMES = {
    "1e30": "1e+30 is outside the int64 range",
    "-1e30": "-1e+30 is outside the int64 range",
    "9223372036854775808": "is outside the int64 range",
    "NaN": "nan is not a whole number",
    "Infinity": "inf is outside the int64 range",
    "1.5": "1.5 is not a whole number",  # Amazon writes whole numbers: a fraction is damage
    '"1.5"': "'1.5' is not a whole number",
    '"soon"': "'soon' is not a whole number",
    "true": "is a boolean",
    "[1600000000000]": "is a list",
    '{"ms": 1}': "is an object",
}


@pytest.mark.parametrize("value", BAD_JSON_TIMES)
def test_amazon_json_bad_timestamps(tmp_path, value):
    source = reviews_2023(tmp_path, '{"user_id": "u2", "parent_asin": "A1", "timestamp": ' + value + "}")
    raw = expect_bad_line(lambda **kw: load_amazon2023(source, **kw), source, 3, BAD_JSON_TIMES[value])
    assert len(raw.events) == 2


def test_amazon_2018_reviews_1e30_is_an_error_not_an_overflow(tmp_path):
    good = json.dumps({"reviewerID": "u1", "asin": "A1", "unixReviewTime": 100})
    source = write(tmp_path / "All_Beauty.json", good + '\n{"reviewerID": "u1", "asin": "A2", "unixReviewTime": 1e30}\n')
    expect_bad_line(lambda **kw: load_amazon2018(source, **kw), source, 2, "unixReviewTime 1e+30 is outside the int64 range")


def test_legal_extreme_and_negative_timestamps_are_kept_exactly(tmp_path):
    # pre-1970 times are times; the int64 limits fit exactly; integral floats are whole seconds
    folder = recbole_folder(tmp_path, INTER_HEADER + b"u\t1\t-86400\nu\t2\t9223372036854775807\n"
                            b"u\t3\t-9223372036854775808\nu\t4\t1.5e9\nu\t5\t+7\n")
    events = load_recbole(folder).events
    assert events["timestamp"].tolist() == [-86400, 2**63 - 1, -(2**63), 1_500_000_000, 7]
    source = write(tmp_path / "ratings_Beauty.csv", "u1,A1,5.0,-5\nu1,A2,5.0,1383955200.0\n")
    assert load_amazon2014(source).events["timestamp"].tolist() == [-5, 1383955200]
    # 2023 milliseconds are floored to seconds, also before 1970
    source = reviews_2023(tmp_path, review_2023("u2", "A3", -1))
    assert load_amazon2023(source).events["timestamp"].tolist() == [1_600_000_000, 1_600_000_001, -1]


def test_recbole_fractional_seconds_are_floored_counted_and_keep_their_order(tmp_path):
    # Two events in the same second, listed against their exact time: after flooring both are 5 s,
    # and the exact time (5.2 before 5.7) must still order them, not the row.
    folder = recbole_folder(tmp_path, INTER_HEADER + b"u\tlate\t5.7\nu\tearly\t5.2\nu\tfirst\t-0.5\nu\tlast\t6\n")
    raw = load_recbole(folder)
    assert raw.events["timestamp"].tolist() == [5, 5, -1, 6]  # floored towards minus infinity
    assert raw.report.counts["timestamps_floored_to_seconds"] == 3
    ordered = raw.events.sort_values(["user", "timestamp", "order"], kind="stable")  # the protocols' order
    assert ordered["item"].tolist() == ["first", "early", "late", "last"]


@pytest.mark.parametrize(
    "value, expected",
    [("17", (17, False)), (" -3 ", (-3, False)), ("000000000000000000000001", (1, False)), (2.0, (2, False)),
     ("2.5", (2, True)), (-2.5, (-3, True)), (2**63 - 1, (2**63 - 1, False))],
)
def test_whole_seconds_accepts(value, expected):
    assert whole_seconds(value, floor_fractions=True) == expected


@pytest.mark.parametrize("value", [2**63, float("nan"), float("inf"), True, None, [1], {"a": 1}, "", "1e", "--1", "1.2.3", "."])
def test_whole_seconds_refuses(value):
    with pytest.raises(BadValue):
        whole_seconds(value, floor_fractions=True)


# --------------------------------------------------------------------------------------------
# Item 5: ids


@pytest.mark.parametrize(
    "row, reason",
    [
        (b"\t3\t7", "empty user_id"),
        (b"u\t\t7", "empty item_id"),
        (b"u\t   \t7", "empty item_id"),
        (b"u\t3\xc2\xa04\t7", "invisible character"),  # a no-break space inside the id
        (b"u\t\xe2\x80\x8b3\t7", "invisible character"),  # a zero-width space
    ],
    ids=["empty user", "empty item", "blank item", "no-break space", "zero-width space"],
)
def test_recbole_bad_ids(tmp_path, row, reason):
    folder = recbole_folder(tmp_path, inter_rows(row))
    raw = expect_bad_line(lambda **kw: load_recbole(folder, **kw), folder / "d.inter", 4, reason)
    assert raw.events["item"].tolist() == ["1", "2"]


def test_recbole_item_file_with_an_empty_id(tmp_path):
    folder = recbole_folder(tmp_path, inter_rows(), item=b"item_id:token\ttitle:token_seq\n1\tOne\n\tNo Id\n2\tTwo\n")
    raw = expect_bad_line(lambda **kw: load_recbole(folder, **kw), folder / "d.item", 3, "empty item_id")
    assert raw.items["item"].tolist() == ["1", "2"]


@pytest.mark.parametrize(
    "header, reason",
    [
        (b"user_id:token\titem_id:token_seq\ttimestamp:float", "item_id:token_seq must be of type token"),
        (b"user_id:float\titem_id:token\ttimestamp:float", "user_id:float must be of type token"),
        (b"user_id:token\titem_id:token\ttimestamp:float_seq", "timestamp:float_seq must be of type float"),
    ],
)
def test_recbole_a_list_type_where_an_id_or_time_belongs(tmp_path, header, reason):
    folder = recbole_folder(tmp_path, header + b"\nu\t1\t5\n")
    with pytest.raises(DataFormatError, match=rf"d\.inter:1: field {reason}"):
        load_recbole(folder, skip_bad=True)  # a header is never skipped


# JSON values where an id belongs (2023 reviews): (JSON text, reason)
BAD_JSON_IDS = {
    '["A1"]': "parent_asin is a list (['A1']), expected an id",
    '{"asin": "A1"}': "parent_asin is an object",
    "1.5": "parent_asin is a number (1.5), expected an id",
    "true": "parent_asin is a boolean",
    '"   "': "empty parent_asin",
    '"A\\u0000B"': "invisible character",
    '"\\ud800"': "lone surrogate U+D800",
    '""': "missing parent_asin",
}


@pytest.mark.parametrize("value", BAD_JSON_IDS)
def test_amazon_json_bad_ids(tmp_path, value):
    source = reviews_2023(tmp_path, '{"user_id": "u2", "parent_asin": ' + value + ', "timestamp": 1600000000000}')
    raw = expect_bad_line(lambda **kw: load_amazon2023(source, **kw), source, 3, BAD_JSON_IDS[value])
    assert raw.events["item"].tolist() == ["A1", "A2"]


def test_amazon_integer_ids_are_text(tmp_path):
    source = reviews_2023(tmp_path, '{"user_id": 17, "parent_asin": 42, "timestamp": 1600000000000}')
    assert load_amazon2023(source).events["item"].tolist() == ["A1", "A2", "42"]


@pytest.mark.parametrize("row, reason", [(b"u1,,5.0,100", "empty item id"), (b" ,A3,5.0,100", "empty user id")])
def test_amazon_csv_empty_ids(tmp_path, row, reason):
    source = write(tmp_path / "ratings_Beauty.csv", b"u1,A1,5.0,100\nu1,A2,5.0,200\n" + row + b"\n")
    expect_bad_line(lambda **kw: load_amazon2014(source, **kw), source, 3, reason)


@pytest.mark.parametrize(
    "row, reason",
    [
        (b"['B0BFDL54Y7' 'B0BFDR9X13'],\"['B07J4WF8VH']\",UK", "next_item \"['B07J4WF8VH']\" is not one product id"),
        (b"['B0BFDL54Y7' 'B0BFDR9X13'],,UK", "empty next_item"),
        (b"['B0BFDL54Y7' '' 'B0BFDR9X13'],B07J4WF8VH,UK", "empty or has whitespace"),
        (b"['B0BFDL54Y7' 'B0B FDR9X13'],B07J4WF8VH,UK", "empty or has whitespace"),
    ],
    ids=["list as next_item", "empty next_item", "empty id in prev_items", "id with a space"],
)
def test_m2_bad_ids(fixtures, tmp_path, row, reason):
    folder, line = m2_with_row(fixtures, tmp_path, row)
    raw = expect_bad_line(lambda **kw: load_m2(folder, **kw), folder / "sessions_train.csv", line, reason)
    assert len(raw.events) == 36


def test_m2_product_with_an_empty_id(fixtures, tmp_path):
    text = (fixtures / "m2" / "products_train.csv").read_bytes()
    folder = m2_folder(fixtures, tmp_path, products=text + b"  ,UK,Nameless,1.0,,,,,,,\n")
    line = text.count(b"\n") + 1
    raw = expect_bad_line(lambda **kw: load_m2(folder, **kw), folder / "products_train.csv", line, "empty product id")
    assert len(raw.items) == 7


# --------------------------------------------------------------------------------------------
# Item 5: text where a title belongs


BAD_TITLES = {
    "2023": ('{"parent_asin": "A2", "title": {"en": "Cream"}}', "title is an object"),
    "2023 list": ('{"parent_asin": "A2", "title": ["Cream"]}', "title is a list"),
    "2023 NaN": ('{"parent_asin": "A2", "title": NaN}', "title is a number (nan), expected text"),
    "2023 bool": ('{"parent_asin": "A2", "title": true}', "title is a boolean"),
    "2023 store": ('{"parent_asin": "A2", "title": "T", "store": {"name": "S"}}', "store is an object"),
    "2023 description": ('{"parent_asin": "A2", "description": [{"p": "x"}]}', "an element of description is an object"),
    "2023 categories": ('{"parent_asin": "A2", "categories": ["Beauty", ["Face"]]}', "an element of categories is a list"),
    "2023 surrogate": ('{"parent_asin": "A2", "title": "Cr\\udce8me"}', "title: invalid UTF-8 (byte 0xe8"),
}


@pytest.mark.parametrize("case", BAD_TITLES)
def test_amazon_2023_non_text_where_text_belongs(tmp_path, case):
    line, reason = BAD_TITLES[case]
    source, meta = reviews_2023(tmp_path), meta_2023(tmp_path, line)
    raw = expect_bad_line(lambda **kw: load_amazon2023(source, meta=meta, **kw), meta, 2, reason)
    assert raw.items["title"].tolist() == ["Good Cream"]


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{'asin': 'A2', 'title': {'en': 'Cream'}}", "title is an object"),
        ("{'asin': 'A2', 'title': b'Cream'}", "title is bytes"),
        ("{'asin': 'A2', 'title': 'x', 'categories': 'Beauty'}", "categories is text"),
        ("{'asin': 'A2', 'title': 'x', 'categories': [['Beauty', {'a': 1}]]}", "a category is an object"),
        ("{'asin': ['A2'], 'title': 'x'}", "asin is a list"),
    ],
    ids=["dict title", "bytes title", "categories not a list", "dict category", "list asin"],
)
def test_amazon_2014_literal_non_text_where_text_belongs(tmp_path, line, reason):
    source = write(tmp_path / "ratings_Beauty.csv", "u1,A1,5.0,100\n")
    meta = write(tmp_path / "meta_Beauty.json.gz", "{'asin': 'A1', 'title': 'Good Cream'}\n" + line + "\n")
    raw = expect_bad_line(lambda **kw: load_amazon2014(source, meta=meta, **kw), meta, 2, reason)
    assert raw.items["title"].tolist() == ["Good Cream"]


def test_amazon_2018_list_title(tmp_path):
    source = write(tmp_path / "All_Beauty.csv", "A1,u1,5.0,100\n")
    meta = write(tmp_path / "meta_All_Beauty.json", '{"asin": "A1", "title": "Soap"}\n{"asin": "A2", "title": ["a", "b"]}\n')
    expect_bad_line(lambda **kw: load_amazon2018(source, meta=meta, **kw), meta, 2, "title is a list")


# --------------------------------------------------------------------------------------------
# Item 5: invalid UTF-8, byte-order marks, duplicate names


def test_recbole_invalid_utf8_in_inter_and_item(tmp_path):
    folder = recbole_folder(tmp_path, inter_rows(b"u\xff\t3\t7"))
    raw = expect_bad_line(lambda **kw: load_recbole(folder, **kw), folder / "d.inter", 4, "invalid UTF-8 (byte 0xff")
    assert raw.events["user"].tolist() == ["u", "u"]
    folder = recbole_folder(tmp_path, inter_rows(), item=b"item_id:token\ttitle:token_seq\n1\tCaf\xe9\n2\tTwo\n", name="e")
    raw = expect_bad_line(lambda **kw: load_recbole(folder, **kw), folder / "e.item", 2, "invalid UTF-8 (byte 0xe9")
    assert raw.items["title"].tolist() == ["Two"]


@pytest.mark.parametrize("relative", ["amazon2014/ratings_Beauty.csv", "amazon2018/All_Beauty.json.gz",
                                      "amazon2023/All_Beauty.jsonl"])
def test_amazon_invalid_utf8(fixtures, tmp_path, relative):
    loader = {"2014": load_amazon2014, "2018": load_amazon2018, "2023": load_amazon2023}[relative[6:10]]
    fixture = fixtures / relative
    lines = (gzip.decompress(fixture.read_bytes()) if fixture.suffix == ".gz" else fixture.read_bytes()).split(b"\n")
    lines[2] = lines[2].replace(b"A", b"\xc3A", 1)  # a lead byte without its continuation
    source = write(tmp_path / fixture.name, b"\n".join(lines))
    raw = expect_bad_line(lambda **kw: loader(source, **kw), source, 3, "invalid UTF-8 (byte 0xc3")
    assert len(raw.events) == 53


def test_m2_invalid_utf8_in_sessions_and_products(fixtures, tmp_path):
    folder, line = m2_with_row(fixtures, tmp_path, b"['B0BFDL54Y7' 'B0BFDR9X13'],B07J4WF8\xfe,UK")
    raw = expect_bad_line(lambda **kw: load_m2(folder, **kw), folder / "sessions_train.csv", line, "invalid UTF-8 (byte 0xfe")
    assert len(raw.events) == 36
    text = (fixtures / "m2" / "products_train.csv").read_bytes().replace("Türklingel".encode(), b"T\xfcrklingel", 1)
    folder = m2_folder(fixtures, tmp_path / "p", products=text)
    expect_bad_line(lambda **kw: load_m2(folder, **kw), folder / "products_train.csv", 3, "invalid UTF-8 (byte 0xfc")


def test_a_byte_order_mark_is_read_as_one(fixtures, tmp_path):
    # RecBole .inter and .item: no phantom user '\ufeffu', no KeyError on '\ufeffitem_id'
    plain = load_recbole(fixtures / "recbole" / "tiny")
    tiny = fixtures / "recbole" / "tiny"
    folder = recbole_folder(tmp_path, BOM + (tiny / "tiny.inter").read_bytes(), BOM + (tiny / "tiny.item").read_bytes(),
                            name="tiny")
    with_bom = load_recbole(folder)
    assert with_bom.events.equals(plain.events) and with_bom.items.equals(plain.items)
    # Amazon 2014 CSV (no header): the first user keeps its id
    fixture = fixtures / "amazon2014" / "ratings_Beauty.csv"
    source = write(tmp_path / "ratings_Beauty.csv", BOM + fixture.read_bytes())
    assert load_amazon2014(source).events.equals(load_amazon2014(fixture).events)
    # Amazon 2023 CSV (with a header) and JSON lines, gzipped too
    source = write(tmp_path / "All_Beauty.csv", BOM + b"user_id,parent_asin,rating,timestamp\nu1,A1,5.0,1600000000000\n")
    assert load_amazon2023(source).events["user"].tolist() == ["u1"]
    fixture = fixtures / "amazon2023" / "All_Beauty.jsonl"
    source = write(tmp_path / "All_Beauty.jsonl.gz", BOM + fixture.read_bytes())
    assert load_amazon2023(source).events.equals(load_amazon2023(fixture).events)
    # a BOM in the middle, where two files were concatenated
    source = write(tmp_path / "joined.csv", b"u1,A1,5.0,100\n" + BOM + b"u2,A1,5.0,100\n")
    assert load_amazon2014(source).events["user"].tolist() == ["u1", "u2"]
    # M2: the header matches
    folder = m2_folder(fixtures, tmp_path, sessions=BOM + (fixtures / "m2" / "sessions_train.csv").read_bytes())
    assert load_m2(folder).events.equals(load_m2(fixtures / "m2").events)


@pytest.mark.parametrize(
    "inter, item, path, reason",
    [
        (b"user_id:token\titem_id:token\titem_id:token\ttimestamp:float\nu\t1\t2\t5\n", None, "d.inter",
         "header names the field 'item_id' twice (columns 2 and 3)"),
        (inter_rows(), b"item_id:token\ttitle:token_seq\ttitle:token_seq\n1\tA\tB\n", "d.item",
         "header names the field 'title' twice"),
        (b"user_id:token\titem_id:token\t:float\nu\t1\t5\n", None, "d.inter", "header field ':float' is not 'name:type'"),
        (b"", None, "d.inter", "empty file"),
        (inter_rows(), b"title:token_seq\nOne\n", "d.item", "needs an item_id field"),
    ],
    ids=["duplicate in .inter", "duplicate in .item", "nameless field", "empty file", "item file without item_id"],
)
def test_recbole_bad_headers(tmp_path, inter, item, path, reason):
    folder = recbole_folder(tmp_path, inter, item)
    with pytest.raises(DataFormatError, match=rf"{path}:1: ") as caught:
        load_recbole(folder, skip_bad=True)
    assert reason in str(caught.value)


def test_amazon_2023_csv_duplicate_header_names(tmp_path):
    source = write(tmp_path / "All_Beauty.csv", "user_id,parent_asin,timestamp,user_id\nu1,A1,1600000000000,u2\n")
    with pytest.raises(DataFormatError, match=r"All_Beauty\.csv:1: header names the column\(s\) user_id more than once"):
        load_amazon2023(source, skip_bad=True)


@pytest.mark.parametrize(
    "loader, name, line, reason",
    [
        (load_amazon2023, "All_Beauty.jsonl", '{"user_id": "u2", "parent_asin": "A1", "parent_asin": "A9", "timestamp": 1}',
         "the key 'parent_asin' appears twice"),
        (load_amazon2014, "reviews_Beauty_5.json", "{'reviewerID': 'u2', 'asin': 'A1', 'asin': 'A9', 'unixReviewTime': 1}",
         "the key 'asin' appears twice"),
    ],
    ids=["JSON", "Python literal"],
)
def test_amazon_repeated_keys(tmp_path, loader, name, line, reason):
    keys = ("user_id", "parent_asin", "timestamp") if loader is load_amazon2023 else ("reviewerID", "asin", "unixReviewTime")
    good = json.dumps(dict(zip(keys, ("u1", "A1", 1000))))
    source = write(tmp_path / name, f"{good}\n{line}\n")
    expect_bad_line(lambda **kw: loader(source, **kw), source, 2, reason)


# --------------------------------------------------------------------------------------------
# Item 8: a --source that is not there


@pytest.fixture
def datasets(tmp_path, monkeypatch) -> Path:
    """A working folder with data/ml-1m/ml-1m.inter (and .item), as a user would have it."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "ml-1m"
    folder.mkdir(parents=True)
    (folder / "ml-1m.inter").write_bytes(inter_rows())
    (folder / "ml-1m.item").write_bytes(b"item_id:token\ttitle:token_seq\n1\tOne\n")
    return tmp_path


@pytest.mark.parametrize(
    "source, error, message",
    [
        ("MISSING", NotFoundError, "--source MISSING: no such folder (or .inter file) (. has nothing named 'MISSING'); "
                                   "--source takes the folder holding NAME.inter"),
        ("data/ml-1n", NotFoundError, "--source data/ml-1n: no such folder (or .inter file); did you mean --source data/ml-1m?"),
        ("data/ml-1m/ml-1m.iter", NotFoundError, "did you mean --source data/ml-1m/ml-1m.inter?"),
        ("nowhere/a/b", NotFoundError, "no such folder (or .inter file) (the nearest folder that exists is .)"),
        ("data", NotFoundError, "--source data holds no NAME.inter file; did you mean --source data/ml-1m?"),
        ("data/ml-1m/ml-1m.item", UsageError, "--source data/ml-1m/ml-1m.item is not a RecBole .inter file: "
                                              "did you mean --source data/ml-1m?"),
    ],
)
def test_recbole_source_that_is_not_there(datasets, source, error, message):
    with pytest.raises(error) as caught:
        load_recbole(source)
    assert message in str(caught.value)


def test_other_sources_that_are_not_there(datasets):
    with pytest.raises(NotFoundError, match=r"--source data/ml-1m is a folder; --source takes a ratings CSV"):
        load_amazon2018("data/ml-1m")
    with pytest.raises(NotFoundError, match=r"--meta data/meta_x.json: no such file .*--meta takes the item metadata"):
        load_amazon2023("data/ml-1m/ml-1m.inter", meta="data/meta_x.json")
    (datasets / "data" / "m2").mkdir()
    sessions = datasets / "data" / "m2" / "sessions_train.csv"
    sessions.write_text("prev_items,next_item,locale\n")
    with pytest.raises(NotFoundError, match=r"is a file; --source takes the M2 task-1 folder .*did you mean --source data/m2\?"):
        load_m2(sessions.relative_to(datasets))
    with pytest.raises(NotFoundError, match=r"--source data/m3: no such folder; did you mean --source data/m2\?"):
        load_m2("data/m3")


def test_cli_missing_source_is_one_red_line(datasets):
    from agentrec.cli.main import app

    result = CliRunner().invoke(app, ["data", "prepare", "recbole", "--source", "data/ml1m", "--out", "out"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: --source data/ml1m: no such folder (or .inter file); did you mean --source data/ml-1m?"]
    assert not (datasets / "out").exists()


def test_clean_id():
    assert clean_id(" B0X ", what="id") == "B0X" and clean_id(42, what="id") == "42"
    for value in (None, 4.0, False, [], {}, "", "\t", "a\x00b"):
        with pytest.raises(BadValue):
            clean_id(value, what="id")


# --------------------------------------------------------------------------------------------
# Beyond the issue's list: damaged .gz, quoted CSV ids, unknown M2 locales, code in a literal line


def test_a_damaged_gz_names_the_file_and_line(fixtures, tmp_path):
    data = gzip.compress(b"".join(json.dumps({"reviewerID": f"u{i}", "asin": "A1", "unixReviewTime": i}).encode() + b"\n"
                                  for i in range(3000)))
    source = tmp_path / "All_Beauty.json.gz"
    source.write_bytes(data[:-40])  # truncated
    with hang_guard(), pytest.raises(DataFormatError, match=r"All_Beauty\.json\.gz:\d+: damaged compressed file") as caught:
        load_amazon2018(source, skip_bad=True)  # a damaged file is never skipped as a line
    assert caught.value.line > 1
    source.write_bytes(b'{"reviewerID": "u1", "asin": "A1", "unixReviewTime": 1}\n')  # not gzip at all
    with pytest.raises(DataFormatError, match=r"All_Beauty\.json\.gz:1: damaged compressed file, .*Not a gzipped file"):
        load_amazon2018(source)
    folder = m2_folder(fixtures, tmp_path)
    (folder / "sessions_train.csv").unlink()
    (folder / "sessions_train.csv.gz").write_bytes(gzip.compress((fixtures / "m2" / "sessions_train.csv").read_bytes())[:-30])
    with pytest.raises(DataFormatError, match=r"sessions_train\.csv\.gz:\d+: damaged compressed file"):
        load_m2(folder)


def test_amazon_quoted_csv_ids_are_refused_not_kept_with_their_quotes(tmp_path):
    source = write(tmp_path / "ratings_Beauty.csv", 'u1,A1,5.0,100\nu1,A2,5.0,200\n"u1","A3",5.0,300\n')
    raw = expect_bad_line(lambda **kw: load_amazon2014(source, **kw), source, 3, "user id '\"u1\"' is quoted")
    assert raw.events["user"].unique().tolist() == ["u1"]


@pytest.mark.parametrize("locale", ["uk", "GB", ""])
def test_m2_unknown_locale_in_a_row_is_refused_not_counted_as_another_locale(fixtures, tmp_path, locale):
    folder, line = m2_with_row(fixtures, tmp_path, f"['B0BFDL54Y7'],B07J4WF8VH,{locale}".encode())
    raw = expect_bad_line(lambda **kw: load_m2(folder, **kw), folder / "sessions_train.csv", line,
                          f"locale {locale!r} is not one of DE, JP, UK, ES, FR, IT")
    assert raw.report.counts["sessions_other_locale"] == 4  # unchanged


def test_amazon_2014_code_in_a_metadata_line_is_no_record(tmp_path):
    source = write(tmp_path / "ratings_Beauty.csv", "u1,A1,5.0,100\n")
    meta = write(tmp_path / "meta_Beauty.json", "{'asin': 'A1', 'title': 'x'}\n__import__('os').system('touch pwned')\n")
    expect_bad_line(lambda **kw: load_amazon2014(source, meta=meta, **kw), meta, 2,
                    "neither a Python literal (it holds a name, a call or an operation")
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
