"""Amazon-M2 (KDD Cup 2023 task 1) loader.

The fixture (``tests/fixtures/m2``) has 15 session rows: 10 UK sessions of lengths
3, 4, 8, 2, 3, 4, 3, 3, 3, 3 (rows 0, 2, 4, 6, 7, 8, 10, 11, 13, 14; 36 events), one UK row with
an empty ``prev_items`` (row 3) and 4 DE rows. Row 4 (lines 6-7) and row 5 (lines 8-9) wrap over
two physical lines. The products file has 7 UK rows (one without a title, one nobody viewed) and
3 DE rows; UK session 8 ends with B0B8NNS6XK, which has no product row.
"""

import gzip
import shutil

import numpy as np
import pytest

from agentrec.data.dataset import PreparedDataset
from agentrec.data.m2 import load_m2, parse_prev_items
from agentrec.data.prepare import prepare
from agentrec.data.protocols import GivenSessions, SemSR
from agentrec.data.raw import DataFormatError, sha256_file
from agentrec.data.sources import get_loader

A, B, C, D, E, F = "B0BFDL54Y7", "B0BFDR9X13", "B07J4WF8VH", "B07Y21LDJX", "B08V12CT4C", "B09MYWH6Y2"
UNKNOWN, NOBODY = "B0B8NNS6XK", "B0B5R8W3L2"


def copy_with(fixtures, tmp_path, *, sessions=None, products=None):
    """A copy of the M2 fixture folder, with the sessions or products text replaced."""
    folder = tmp_path / "m2"
    shutil.copytree(fixtures / "m2", folder)
    if sessions is not None:
        (folder / "sessions_train.csv").write_text(sessions, encoding="utf-8")
    if products is not None:
        (folder / "products_train.csv").write_text(products, encoding="utf-8")
    return folder


def sessions_text(fixtures) -> str:
    return (fixtures / "m2" / "sessions_train.csv").read_text(encoding="utf-8")


def test_counts_and_report(fixtures):
    raw = load_m2(fixtures / "m2")
    events = raw.events
    assert events.columns.tolist() == ["user", "item", "timestamp", "order"]
    assert (len(events), events["user"].nunique(), events["item"].nunique()) == (36, 10, 7)
    assert events.groupby("user", sort=False).size().tolist() == [3, 4, 8, 2, 3, 4, 3, 3, 3, 3]
    assert raw.report.counts == {"sessions_other_locale": 4, "empty_sessions": 1,
                                 "products_other_locale": 3, "metadata_rows": 7}
    assert raw.given_sessions and "row" in raw.time_note and raw.name == "m2-uk"
    assert events["timestamp"].dtype == np.int64 and events["order"].tolist() == list(range(36))
    folder = fixtures / "m2"
    files = ("sessions_train.csv", "products_train.csv")
    assert raw.sources == {str(folder / f): sha256_file(folder / f) for f in files}
    assert get_loader("m2") is load_m2


def test_session_events_follow_the_row(fixtures):
    events = load_m2(fixtures / "m2").events
    wrapped = events[events["user"] == "s4"]  # lines 6-7 of the file
    assert wrapped["item"].tolist() == [A, B, C, D, E, F, A, B]  # prev_items, then next_item
    assert (wrapped["timestamp"] == 4).all() and np.all(np.diff(wrapped["order"]) == 1)
    assert "s3" not in set(events["user"])  # the empty session
    assert "s1" not in set(events["user"])  # a DE row


def test_other_locale(fixtures):
    raw = load_m2(fixtures / "m2", locale="de")
    assert raw.name == "m2-de" and raw.events["user"].unique().tolist() == ["s1", "s5", "s9", "s12"]
    assert len(raw.events) == 3 + 7 + 2 + 3
    assert raw.report.counts["sessions_other_locale"] == 11 and raw.report.counts["products_other_locale"] == 7
    assert raw.items.set_index("item").loc[A, "title"] == "Ring Video Türklingel, Akku, 1080p HD"
    with pytest.raises(ValueError, match="unknown M2 locale 'GB'"):
        load_m2(fixtures / "m2", locale="GB")


def test_products_mapping(fixtures):
    items = load_m2(fixtures / "m2").items.set_index("item")
    assert items.columns.tolist() == ["title", "brand", "price", "description"]
    assert items.loc[A, "title"] == "Ring Video Doorbell, Battery-powered, 1080p HD"
    assert items.loc[A, "price"] == 99.99 and items.loc[A, "brand"] == "Ring"
    # a description over two physical lines, whitespace folded
    assert items.loc[B, "description"] == "Our best sounding Echo Dot yet. Enjoy an improved audio experience."
    assert np.isnan(items.loc[E, "price"]) and items.loc[C, "brand"] is None
    assert items.loc[F, "title"] is None  # kept; counted by resolve_items


@pytest.mark.parametrize(
    "text, expected",
    [
        ("['B09W9FND7K' 'B09JSPLN1M']", ["B09W9FND7K", "B09JSPLN1M"]),
        ("['B09W9FND7K' 'B09JSPLN1M' 'B09JSPLN1M'\n 'B0B4MZZ8MB']",
         ["B09W9FND7K", "B09JSPLN1M", "B09JSPLN1M", "B0B4MZZ8MB"]),
        ("['B09W9FND7K', 'B09JSPLN1M']", ["B09W9FND7K", "B09JSPLN1M"]),
        ("[]", []),
        ("B09W9FND7K B09JSPLN1M", None),
        ("['B09W9FND7K' 'B09JSPLN1M'", None),
        ("['B09W9FND7K' B09JSPLN1M]", None),
        ("[__import__('os')]", None),
    ],
)
def test_parse_prev_items(text, expected):
    assert parse_prev_items(text) == expected


def test_bad_prev_items_names_the_line_where_the_record_starts(fixtures, tmp_path):
    # row 6 is on line 10: the two wrapped records above it take two lines each
    text = sessions_text(fixtures).replace(f"['{C}'],{D},UK", f"[{C}],{D},UK")
    folder = copy_with(fixtures, tmp_path, sessions=text)
    with pytest.raises(DataFormatError, match=r"sessions_train\.csv:10: prev_items '\[B07J4WF8VH\]'") as caught:
        load_m2(folder)
    assert caught.value.line == 10
    raw = load_m2(folder, skip_bad=True)
    assert raw.report.counts["bad_lines"] == 1 and len(raw.events) == 36 - 2
    assert raw.report.bad_lines[0].startswith(f"{folder / 'sessions_train.csv'}:10: ")


def test_bad_wrapped_record_names_its_first_line(fixtures, tmp_path):
    text = sessions_text(fixtures).replace(f" '{F}' '{A}']\",{B},UK", f" '{F}' {A}]\",{B},UK")
    folder = copy_with(fixtures, tmp_path, sessions=text)
    with pytest.raises(DataFormatError, match=r"sessions_train\.csv:6: "):
        load_m2(folder)


def test_wrong_field_count_and_header(fixtures, tmp_path):
    text = sessions_text(fixtures).replace(f"['{D}' '{E}'],{F},UK", f"['{D}' '{E}'],{F}")
    folder = copy_with(fixtures, tmp_path, sessions=text)
    with pytest.raises(DataFormatError, match=r"sessions_train\.csv:11: expected 3 fields, found 2"):
        load_m2(folder)
    assert load_m2(folder, skip_bad=True).report.counts["bad_lines"] == 1
    folder = copy_with(fixtures, tmp_path / "h", sessions="session,items\n1,2\n")
    with pytest.raises(DataFormatError, match=r"sessions_train\.csv:1: header"):
        load_m2(folder)


def test_bad_product_row(fixtures, tmp_path):
    text = (fixtures / "m2" / "products_train.csv").read_text(encoding="utf-8")
    text = text.replace(f"{D},UK,Fire TV Stick with Alexa Voice Remote,39.99,Amazon,Black,,,,,",
                        f"{D},UK,Fire TV Stick with Alexa Voice Remote,39.99")
    folder = copy_with(fixtures, tmp_path, products=text)
    # line 7: the product above it has a description over lines 4-5
    with pytest.raises(DataFormatError, match=r"products_train\.csv:7: expected 11 fields, found 4"):
        load_m2(folder)
    raw = load_m2(folder, skip_bad=True)
    assert raw.report.counts["bad_lines"] == 1 and len(raw.items) == 6


def test_gzipped_files_and_missing_folder(fixtures, tmp_path):
    folder = tmp_path / "gz"
    folder.mkdir()
    for name in ("sessions_train.csv", "products_train.csv"):
        with gzip.open(folder / f"{name}.gz", "wb") as out:
            out.write((fixtures / "m2" / name).read_bytes())
    raw = load_m2(folder)
    assert raw.events.equals(load_m2(fixtures / "m2").events) and len(raw.items) == 7
    assert str(folder / "sessions_train.csv.gz") in raw.sources
    with pytest.raises(FileNotFoundError, match="sessions_train.csv"):
        load_m2(tmp_path / "nowhere")


def test_unknown_item_survives_and_is_counted(fixtures):
    ds = prepare(load_m2(fixtures / "m2"), SemSR(min_user_interactions=1, min_item_count=1, test_fraction=0.2))
    counts = ds.stats["load_report"]["counts"]
    assert counts["interacted_items_missing_from_metadata"] == 1
    assert counts["items_without_title"] == 2  # F has an empty title; the unknown item has none
    assert UNKNOWN in set(ds.items["original_id"]) and NOBODY not in set(ds.items["original_id"])


def test_given_sessions_end_to_end_and_round_trip(fixtures, tmp_path):
    ds = prepare(load_m2(fixtures / "m2"), GivenSessions(valid_fraction=0.2, test_fraction=0.2))
    counts = ds.stats["counts"]
    # 10 sessions by row order: rows 0-8 (six sessions) train, 10-11 valid, 13-14 test.
    # Train samples are every prefix: 2 + 3 + 7 + 1 + 2 + 3; valid and test only the last item.
    assert (counts["items"], counts["sequences"], counts["events"]) == (7, 10, 36)
    assert (counts["train_samples"], counts["valid_samples"], counts["test_samples"]) == (18, 2, 2)
    assert ds.test.session.tolist() == ["s13", "s14"] and ds.valid.session.tolist() == ["s10", "s11"]
    original = dict(zip(ds.items["item_id"], ds.items["original_id"]))
    assert [original[i] for i in ds.test.target] == [F, A]
    assert [original[i] for i in ds.test.history_of(1)] == [C, E]
    assert ds.stats["time_note"] and ds.stats["dataset"] == "m2-uk"

    out = ds.save(tmp_path / "prepared")
    back = PreparedDataset.load(out)
    assert back.fingerprint == ds.fingerprint and back.titles() == ds.titles()
    for name in ("train", "valid", "test"):
        assert back.split(name).digest() == ds.split(name).digest()
