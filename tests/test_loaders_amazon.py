"""Amazon reviews 2014, 2018 and 2023 loaders.

Every fixture follows one design (see ``tests/fixtures/amazon*/README.md``): 8 regular users
review each of 6 items once (6 events each), the first two of them also review a rare item that
has no metadata line, and a light user has 4 events (one an exact duplicate). So 54 events,
9 users and 7 items; the metadata has 7 lines: the 6 regular items and one nobody reviewed.
Under SemSR's protocol (users with more than 5 events, items seen at least 5 times) the light user
and the rare item go, leaving 8 users x 6 events over 6 items, split 6 / 1 / 1 users.
"""

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agentrec.data.amazon import load_amazon2014, load_amazon2018, load_amazon2023
from agentrec.data.dataset import PreparedDataset
from agentrec.data.prepare import prepare
from agentrec.data.protocols import SemSR
from agentrec.data.raw import DataFormatError, sha256_file
from agentrec.data.sources import get_loader

# release -> (loader, reviews file, ratings CSV or None, metadata, rare item, light user)
RELEASES = {
    "2014": (load_amazon2014, "amazon2014/reviews_Beauty_5.json", "amazon2014/ratings_Beauty.csv",
             "amazon2014/meta_Beauty.json.gz", "B00005JS5C", "A2G8NFGCIRI2OD"),
    "2018": (load_amazon2018, "amazon2018/All_Beauty.json.gz", "amazon2018/All_Beauty.csv",
             "amazon2018/meta_All_Beauty.json", "B00027D8IC", "A1KXONFPU2XQ5K"),
    "2023": (load_amazon2023, "amazon2023/All_Beauty.jsonl", None,
             "amazon2023/meta_All_Beauty.jsonl", "B0BXYZ1234", "AE4DFPNE2HSJZXVNNMX4XWZXQ5KA"),
}
META_ONLY = {"2014": "B000050FDE", "2018": "B000050FDE", "2023": "B09XYZMETA"}


def load(fixtures, release, *, csv=False, meta=True, **options):
    loader, reviews, ratings, meta_file, *_ = RELEASES[release]
    source = fixtures / (ratings if csv else reviews)
    return loader(source, meta=fixtures / meta_file if meta else None, **options)


def read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def write_lines(path: Path, lines: list[str]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def corrupt(fixtures, relative: str, tmp_path: Path, line_no: int, text: str) -> Path:
    """A copy of a fixture, same file name, with line ``line_no`` (1-based) replaced by ``text``."""
    lines = read_lines(fixtures / relative)
    lines[line_no - 1] = text
    return write_lines(tmp_path / Path(relative).name, lines)


# ------------------------------------------------------------------------ counts and columns


@pytest.mark.parametrize("release", RELEASES)
def test_counts_and_columns(fixtures, release):
    raw = load(fixtures, release)
    events = raw.events
    assert events.columns.tolist() == ["user", "item", "timestamp", "order"]
    assert (len(events), events["user"].nunique(), events["item"].nunique()) == (54, 9, 7)
    assert len(raw.items) == 7 and raw.report.counts == {"metadata_rows": 7}
    assert events["timestamp"].dtype == np.int64 and events["order"].dtype == np.int64
    assert events["order"].tolist() == list(range(54))
    assert all(isinstance(u, str) for u in events["user"]) and all(isinstance(i, str) for i in events["item"])
    assert not raw.given_sessions and raw.time_note is None
    # every file read is recorded with its digest
    _, reviews, _, meta, *_ = RELEASES[release]
    assert raw.sources == {str(fixtures / reviews): sha256_file(fixtures / reviews),
                           str(fixtures / meta): sha256_file(fixtures / meta)}


@pytest.mark.parametrize("release", ["2014", "2018"])
def test_ratings_csv_gives_the_same_events_as_the_reviews(fixtures, release):
    from_reviews = load(fixtures, release).events
    from_csv = load(fixtures, release, csv=True).events
    assert from_csv.equals(from_reviews)


def test_2018_csv_puts_the_item_first(fixtures):
    raw = load(fixtures, "2018", csv=True, meta=False)
    # first line: B00004U9V2,A1KXONFPU2XQ5K,5.0,1454976000
    first = raw.events.iloc[0]
    assert (first["user"], first["item"], first["timestamp"]) == ("A1KXONFPU2XQ5K", "B00004U9V2", 1454976000)
    assert raw.items.empty and list(raw.sources) == [str(fixtures / "amazon2018/All_Beauty.csv")]


def test_names_come_from_the_file(fixtures):
    assert load(fixtures, "2014").name == "amazon2014-beauty-5core"
    assert load(fixtures, "2014", csv=True).name == "amazon2014-beauty"
    assert load(fixtures, "2018").name == "amazon2018-all_beauty"
    assert load(fixtures, "2023").name == "amazon2023-all_beauty"


def test_registry_names_these_loaders():
    assert get_loader("amazon2014") is load_amazon2014
    assert get_loader("amazon2018") is load_amazon2018
    assert get_loader("amazon2023") is load_amazon2023


@pytest.mark.parametrize("release", RELEASES)
def test_duplicate_reviews_are_kept(fixtures, release):
    events = load(fixtures, release).events
    light = events[events["user"] == RELEASES[release][5]]
    assert len(light) == 4
    assert light.duplicated(["user", "item", "timestamp"]).sum() == 1


def test_format_is_sniffed_when_the_name_does_not_say(fixtures, tmp_path):
    as_text = tmp_path / "reviews.txt"
    as_text.write_text((fixtures / "amazon2014/reviews_Beauty_5.json").read_text())
    plain = tmp_path / "ratings.dat"
    plain.write_text((fixtures / "amazon2014/ratings_Beauty.csv").read_text())
    assert load_amazon2014(as_text).events.equals(load_amazon2014(plain).events)


# ------------------------------------------------------------------------ field mapping


def test_2014_metadata_mapping(fixtures):
    items = load(fixtures, "2014").items.set_index("item")
    creme = items.loc["7806397051"]
    assert creme["title"] == "Crème de Jour Hydratante – 50 ml" and creme["brand"] == "Lumière"
    # two category paths flattened, duplicates ("Beauty", "Skin Care") kept once, in order
    assert creme["categories"] == ["Beauty", "Skin Care", "Face", "Creams & Moisturizers", "Body"]
    assert creme["price"] == 12.5 and creme["description"] == "Moisturizing cream for dry skin. Use twice a day."
    # Python 2's repr of UTF-8 bytes ('Caf\xc3\xa9') is read back as the text it meant
    assert items.loc["9759091062", "title"] == "Café Latte Lip Balm"
    assert items.loc["9788072216", "title"] == "Bamboo Brush Set & Pouch"  # &amp; decoded
    assert items.loc["B00004U9V2", "title"] == "Crabtree & Evelyn - Gardener's Ultra-Moisturising Hand Therapy"
    no_title = items.loc["B00004TMFE"]  # kept without a title; counted later by resolve_items
    assert no_title["title"] is None and math.isnan(no_title["price"]) and no_title["categories"] == ["Beauty"]


def test_2014_metadata_is_never_evaluated(fixtures, tmp_path):
    marker = tmp_path / "pwned"
    meta = corrupt(fixtures, "amazon2014/meta_Beauty.json.gz", tmp_path, 2,
                   f"__import__('pathlib').Path({str(marker)!r}).touch()")
    with pytest.raises(DataFormatError, match=r"meta_Beauty\.json\.gz:2: not a valid record"):
        load_amazon2014(fixtures / "amazon2014/ratings_Beauty.csv", meta=meta)
    assert not marker.exists()


def test_2018_metadata_mapping(fixtures):
    items = load(fixtures, "2018").items.set_index("item")
    assert items.loc["B00004U9V2", "price"] == 12.99  # "$12.99"
    assert items.loc["B0000530HU", "price"] == 5.0  # "$5.00 - $9.00": the first number
    assert math.isnan(items.loc["B00006L9LC", "price"])  # ""
    assert items.loc["B00008JOQI", "price"] == 1299.0  # "$1,299.00"
    assert math.isnan(items.loc["B0000CBW5R", "price"])  # CSS that leaked into the field
    assert items.loc["B00006L9LC", "title"] == "Citre Shine Miracle Hair Polish"  # tags stripped
    assert items.loc["B00004U9V2", "title"] == "Crabtree & Evelyn Hand Therapy"
    assert items.loc["B00008JOQI", "title"] == "Zum Bar Goat's Milk Soap, Frankincense"
    assert items.loc["B00004U9V2", "description"] == "Rich hand cream. With shea butter."
    assert items.loc["B00006L9LC", "description"] == "Adds shine to dry hair."
    assert items.loc["B00004U9V2", "categories"] == ["Beauty", "Skin Care", "Hands & Nails"]
    assert items.loc["B0000530HU", "categories"] == ["Beauty", "Shaving"]
    assert items.loc["B0000CBW5R", "categories"] == ["All Beauty"]  # empty list: main_cat instead
    assert items.loc["B0000DK4LA", "title"] is None and items.loc["B0000DK4LA", "brand"] == "Generic"


def test_2023_reviews_use_parent_asin_and_seconds(fixtures):
    raw = load(fixtures, "2023")
    # line 2: "timestamp": 1602028800137 (milliseconds) -> whole seconds
    assert raw.events["timestamp"].iloc[1] == 1602028800
    assert raw.events["timestamp"].max() < 10**10
    # reviews of the variant B088T1L4ZJ count for its parent B088SZDGXG
    assert "B088T1L4ZJ" not in set(raw.events["item"])
    assert (raw.events["item"] == "B088SZDGXG").sum() == 8


def test_2023_metadata_mapping(fixtures):
    items = load(fixtures, "2023").items.set_index("item")
    howard = items.loc["B01CUPMQZE"]
    assert howard["title"] == "Howard LC0008 Leather Conditioner, 8-Ounce"
    assert howard["brand"] == "Howard Products" and howard["price"] == 9.99
    assert howard["categories"] == ["All Beauty"]  # no categories: main_category instead
    assert math.isnan(items.loc["B076WQZGPM", "price"])  # null
    assert items.loc["B076WQZGPM", "description"] == "Detoxifying cleanser. Made with charcoal."
    assert items.loc["B000B658RI", "description"] == "All natural 8 oz"  # no description: features
    assert items.loc["B088SZDGXG", "categories"] == ["Beauty & Personal Care", "Makeup", "Lips"]
    assert items.loc["B088SZDGXG", "title"] == "Lip Tint, Rosé"
    assert items.loc["B07QYR7VCB", "title"] is None


# ------------------------------------------------------------------------ malformed input

# (release, file, line, replacement, expected reason)
BAD = [
    ("2014", "amazon2014/reviews_Beauty_5.json", 5, '{"reviewerID": "A1", "asin": ', "not a valid record"),
    ("2014", "amazon2014/ratings_Beauty.csv", 7, "A1YJEY40YUW4SE,7806397051,5.0",
     "expected 4 comma-separated fields, found 3"),
    ("2014", "amazon2014/ratings_Beauty.csv", 9, "A1YJEY40YUW4SE,7806397051,5.0,yesterday",
     "timestamp 'yesterday' is not a whole number"),
    ("2018", "amazon2018/All_Beauty.json.gz", 11, '{"asin": "B00004U9V2", "unixReviewTime": 1454976000}',
     "missing reviewerID"),
    ("2018", "amazon2018/All_Beauty.csv", 3, "B00004U9V2,A1KXONFPU2XQ5K,5.0,1454976000,extra", "found 5"),
    ("2023", "amazon2023/All_Beauty.jsonl", 13,
     '{"user_id": "AX", "parent_asin": "B01CUPMQZE", "asin": "B01CUPMQZE", "timestamp": "soon"}',
     "timestamp 'soon' is not a whole number"),
    ("2023", "amazon2023/All_Beauty.jsonl", 4, "[1, 2, 3]", "expected an object, found list"),
]


@pytest.mark.parametrize("release, relative, line_no, text, reason", BAD)
def test_malformed_interaction_line(fixtures, tmp_path, release, relative, line_no, text, reason):
    loader = RELEASES[release][0]
    bad = corrupt(fixtures, relative, tmp_path, line_no, text)
    with pytest.raises(DataFormatError) as caught:
        loader(bad)
    assert f"{bad.name}:{line_no}: " in str(caught.value) and reason in str(caught.value)
    assert caught.value.line == line_no
    raw = loader(bad, skip_bad=True)
    assert raw.report.counts["bad_lines"] == 1 and len(raw.events) == 53
    assert raw.report.bad_lines[0].startswith(f"{bad}:{line_no}: ")


# (release, metadata line, replacement, expected reason)
BAD_META = [
    ("2014", 3, "{'asin': '9788072216', 'title': 'Unclosed", "not a valid record"),
    ("2014", 4, "{'title': 'No id here', 'price': 1.0}", "missing asin"),
    ("2018", 5, '{"asin": "B0000CBW5R", "title": "x",', "not a valid record"),
    ("2023", 6, '{"title": "no parent", "store": "S"}', "missing parent_asin"),
]


@pytest.mark.parametrize("release, line_no, text, reason", BAD_META)
def test_malformed_metadata_line(fixtures, tmp_path, release, line_no, text, reason):
    loader, reviews, _, meta_file, *_ = RELEASES[release]
    meta = corrupt(fixtures, meta_file, tmp_path, line_no, text)
    with pytest.raises(DataFormatError, match=rf"{meta.name.replace('.', '[.]')}:{line_no}: {reason}"):
        loader(fixtures / reviews, meta=meta)
    raw = loader(fixtures / reviews, meta=meta, skip_bad=True)
    assert raw.report.counts["bad_lines"] == 1 and len(raw.items) == 6 and len(raw.events) == 54


def test_blank_lines_are_not_records(fixtures, tmp_path):
    lines = read_lines(fixtures / "amazon2014/ratings_Beauty.csv")
    source = write_lines(tmp_path / "ratings_Beauty.csv", lines[:3] + ["", "  "] + lines[3:])
    assert len(load_amazon2014(source).events) == 54


# ------------------------------------------------------------------------ with a protocol


@pytest.mark.parametrize("release", RELEASES)
def test_interacted_items_without_metadata_survive_and_are_counted(fixtures, release):
    rare = RELEASES[release][4]
    ds = prepare(load(fixtures, release), SemSR(min_user_interactions=1, min_item_count=1, min_sequence_length=2))
    counts = ds.stats["load_report"]["counts"]
    assert counts["interacted_items_missing_from_metadata"] == 1
    # the rare item plus the one metadata line without a title
    assert counts["items_without_title"] == 2
    row = ds.items[ds.items["original_id"] == rare]
    assert len(row) == 1 and row["title"].isna().all()
    assert len(ds.items) == 7 and META_ONLY[release] not in set(ds.items["original_id"])


@pytest.mark.parametrize("release", RELEASES)
def test_semsr_end_to_end_and_round_trip(fixtures, tmp_path, release):
    protocol = SemSR(min_user_interactions=6, min_item_count=5, valid_fraction=0.1, test_fraction=0.1, seed=0)
    ds = prepare(load(fixtures, release), protocol)
    counts = ds.stats["counts"]
    # 8 users x 6 events over 6 items survive; round(0.8) = 1 user each for valid and test;
    # every prefix is a sample: 6 x 5 train, 5 valid, 5 test.
    assert (counts["items"], counts["sequences"], counts["events"]) == (6, 8, 48)
    assert (counts["train_samples"], counts["valid_samples"], counts["test_samples"]) == (30, 5, 5)
    assert (counts["train_sessions"], counts["valid_sessions"], counts["test_sessions"]) == (6, 1, 1)
    steps = {row["step"]: row for row in ds.stats["filtering"]}
    assert steps["drop_short_users"]["users_removed"] == 1 and steps["drop_short_users"]["events_removed"] == 4
    assert steps["drop_rare_items"]["items_removed"] == 1 and steps["drop_rare_items"]["events_removed"] == 2
    assert ds.stats["dataset"].startswith(f"amazon{release}-")
    assert set(ds.stats["sources"]) == {str(fixtures / RELEASES[release][1]), str(fixtures / RELEASES[release][3])}

    out = ds.save(tmp_path / "prepared")
    back = PreparedDataset.load(out)
    assert back.fingerprint == ds.fingerprint and back.n_items == 6
    assert back.titles() == ds.titles() and back.items["original_id"].tolist() == ds.items["original_id"].tolist()
    for name in ("train", "valid", "test"):
        assert back.split(name).digest() == ds.split(name).digest()
    assert json.loads((out / "items.jsonl").read_text(encoding="utf-8").splitlines()[0])["item_id"] == 1


def test_2023_rating_only_csv_with_header(fixtures, tmp_path):
    rows = [json.loads(line) for line in read_lines(fixtures / "amazon2023/All_Beauty.jsonl")]
    lines = ["user_id,parent_asin,rating,timestamp"]
    lines += [f"{r['user_id']},{r['parent_asin']},{r['rating']},{r['timestamp']}" for r in rows]
    source = write_lines(tmp_path / "All_Beauty.csv", lines)
    assert load_amazon2023(source).events.equals(load(fixtures, "2023", meta=False).events)
    write_lines(source, ["user,item,rating,time"] + lines[1:])
    with pytest.raises(DataFormatError, match=r"All_Beauty\.csv:1: header .* lacks the column\(s\) user_id, parent"):
        load_amazon2023(source)


def test_swapped_csv_columns_are_warned_about(fixtures, caplog):
    with caplog.at_level("WARNING", logger="agentrec.data.amazon"):
        load_amazon2018(fixtures / "amazon2014/ratings_Beauty.csv")  # a 2014 file: user first
    assert "is this the right loader?" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="agentrec.data.amazon"):
        load_amazon2018(fixtures / "amazon2018/All_Beauty.csv")
    assert "right loader" not in caplog.text
