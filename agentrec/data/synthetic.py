"""A synthetic catalogue and click sessions with a latent semantic structure.

The generator stands in for a real session dataset when none is at hand (tests, benchmarks, quick
experiments), and it is built so that the two kinds of signal agentrec's models use are both there:

* **text signal**: items belong to latent categories; every category has its own name word, brand
  pool and 8-20 descriptor words, and an item's title is built from them (plus a generic word and a
  model number), so titles of one category share words and titles of different categories mostly
  do not. Text embeddings of titles therefore carry category information.
* **sequential signal**: a session starts in one category (usually its latent user's home category);
  each next click stays in the current category with probability 0.8 and otherwise drifts to a
  neighbouring category (index +-1, which mostly shares the top-level department). Inside a
  category, items have a fixed order (their popularity rank); a click that stays in the category
  moves, with probability 0.7, a few ranks away from the previous item, so neighbouring ranks
  co-occur in sessions, and is otherwise a fresh draw from the category's Zipf popularity.

Sizes: ``n_categories = max(2, round(sqrt(items) / 2))`` (at most ``items``), e.g. 2 for 10 items,
16 for 1,000, 158 for 100,000, 354 for 500,000. Every category holds at least one item.

Everything is vectorised numpy over all items and all clicks at once (no Python loop over sessions
or clicks; only over the few hundred categories), so 500,000 items and 1,000,000 sessions take
seconds. The same ``seed`` gives identical output.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from agentrec.core.errors import UsageError
from agentrec.core.options import Range
from agentrec.data.raw import RawData

logger = logging.getLogger(__name__)

# Top-level departments and their sub-category nouns (a category's name word). Category c belongs
# to department c * len(DEPARTMENTS) // n_categories, so neighbouring categories share a department.
DEPARTMENTS: dict[str, tuple[str, ...]] = {
    "Kitchen": ("kettle", "toaster", "blender", "skillet", "saucepan", "teapot", "colander", "spatula",
                "grinder", "juicer", "whisk", "ladle"),
    "Electronics": ("headphones", "speaker", "charger", "keyboard", "mouse", "monitor", "webcam", "router",
                    "microphone", "earbuds", "tablet", "projector"),
    "Beauty": ("shampoo", "conditioner", "serum", "moisturizer", "lipstick", "mascara", "eyeliner", "perfume",
               "cleanser", "sunscreen", "toner", "foundation"),
    "Sports": ("racket", "helmet", "tent", "kettlebell", "jersey", "sneakers", "goggles", "skateboard",
               "bicycle", "paddle", "dumbbell", "hammock"),
    "Home": ("lamp", "curtain", "pillow", "blanket", "rug", "mirror", "candle", "vase", "clock", "shelf",
             "duvet", "towel"),
    "Toys": ("puzzle", "doll", "robot", "kite", "plush", "drone", "railway", "marbles", "slime", "dinosaur",
             "crayons", "playhouse"),
    "Garden": ("hose", "trowel", "planter", "sprinkler", "shears", "birdhouse", "wheelbarrow", "seeds",
               "lantern", "fertilizer", "rake", "greenhouse"),
    "Automotive": ("wipers", "dashcam", "floormat", "seatcover", "polish", "antifreeze", "toolkit", "jack",
                   "headlight", "compressor", "wax", "inflator"),
    "Pet Supplies": ("leash", "collar", "kibble", "litter", "aquarium", "birdcage", "scratcher", "chew",
                     "kennel", "harness", "feeder", "catnip"),
    "Office": ("stapler", "notebook", "pen", "binder", "planner", "envelope", "marker", "calculator",
               "organizer", "label", "folder", "highlighter"),
    "Clothing": ("jacket", "hoodie", "scarf", "sweater", "jeans", "socks", "beanie", "raincoat", "cardigan",
                 "blouse", "shorts", "vest"),
    "Music": ("guitar", "ukulele", "drumsticks", "harmonica", "violin", "metronome", "capo", "amplifier",
              "tuner", "strings", "cajon", "flute"),
}

# Prefixes that make further sub-categories once a department has used all of its nouns.
MODIFIERS = ("travel", "kids", "outdoor", "smart", "mini", "professional", "vintage", "eco", "luxury",
             "compact", "deluxe", "family", "gaming", "studio", "winter", "summer", "classic", "urban")

# Category-specific vocabulary is drawn from this pool (materials, colours, features, motifs).
DESCRIPTORS = tuple(dict.fromkeys("""
steel bamboo walnut oak ceramic glass copper brass leather cotton linen wool silk nylon titanium
aluminum carbon marble granite velvet denim suede canvas rubber silicone porcelain cedar birch maple
willow teak cork felt jute acrylic enamel pewter chrome graphite quartz slate
crimson azure ivory charcoal olive teal amber coral indigo sage mustard burgundy navy cream lavender
mint rose onyx pearl scarlet cobalt emerald saffron ochre lilac plum taupe sand copperleaf jade
wireless foldable rechargeable waterproof insulated adjustable ergonomic portable magnetic cordless
organic vegan scented unscented matte glossy brushed textured quilted padded ribbed rustic modern
minimalist nordic retro industrial tropical alpine coastal heavyweight lightweight slim oversized
stackable reversible breathable thermal reflective hypoallergenic dimmable digital analog solar hybrid
turbo precision stretch fleece mesh woven knitted handmade engraved embossed polished hammered frosted
lotus fern jasmine citrus vanilla coconut eucalyptus ginger honey mango berry arctic desert canyon
harbor summit meadow prairie glacier ember aurora nebula comet falcon otter fox wolf heron panda koala
tiger orchid sequoia lagoon monsoon tundra savanna cascade breeze thunder
round square oval hexagonal tall jumbo twin triple layered curved angled tapered
silent turbocharged lowprofile widebody telescopic detachable collapsible modular weighted balanced
""".split()))

# Words any title may carry, whatever its category.
GENERIC = ("Pro", "Plus", "Max", "Lite", "Classic", "Deluxe", "Essential", "Premium", "Select", "Original",
           "Signature", "Edition", "Series", "Basics", "Elite", "Prime", "Ultra", "Studio", "Home", "Everyday",
           "Value", "Advanced", "Standard", "Sport", "Go", "Neo", "One", "Air", "Flex", "Core")

# Brand names are a prefix syllable and a suffix syllable (24 x 24 = 576 names).
BRAND_PREFIXES = ("Ar", "Bel", "Cor", "Dar", "El", "Fen", "Gal", "Hal", "Ix", "Jun", "Kel", "Lum", "Mar",
                  "Nor", "Ost", "Pel", "Quin", "Ros", "Sol", "Tav", "Ul", "Ver", "Wex", "Zan")
BRAND_SUFFIXES = ("ara", "vik", "ton", "ex", "ia", "ora", "ix", "well", "ford", "line", "mark", "co", "ium",
                  "ant", "ly", "ova", "is", "ent", "ar", "eon", "ique", "by", "ster", "max")

MODEL_LETTERS = tuple("ABCDEFGHJKLMNPRSTUVWXZ")

EPOCH_S = 1_672_531_200  # 2023-01-01 00:00:00 UTC, start of the 90-day window
WINDOW_S = 90 * 86_400
DEFAULT_MAX_SESSIONS = 2_000_000  # default sessions = 2 * items, at most this many

# Behaviour of the latent sessions (probabilities per click unless stated).
STAY_PROBABILITY = 0.8  # the next click stays in the current category
NEAR_PROBABILITY = 0.7  # given it stays: a few ranks from the previous item, else a popularity draw
HOME_PROBABILITY = 0.7  # per session: it starts in its latent user's home category
SESSIONS_PER_USER = 4  # latent users = sessions / this
ZIPF_EXPONENT = 1.1  # popularity of the item at rank r inside its category ~ (r + 1) ** -exponent
LENGTH_P = 0.25  # session length = 1 + Geometric(p) (support 1, 2, ...), mean 1 + 1 / p = 5 (the default)
MAX_LENGTH = 50
GAP_S = (10, 300)  # seconds between consecutive clicks, uniform, inclusive


def n_categories_for(items: int) -> int:
    """``max(2, round(sqrt(items) / 2))``, never more than ``items`` (halves round up)."""
    return int(min(items, max(2, math.floor(math.sqrt(items) / 2 + 0.5))))


def load_synthetic(
    source=None,
    *,
    items: int = 1000,
    sessions: int | None = None,
    seed: int = 0,
    mean_length: float | None = None,
    skip_bad: bool = False,
) -> RawData:
    """Generate a catalogue of ``items`` items and ``sessions`` click sessions.

    Args:
        source: must be None (accepted for the common loader signature; nothing is read).
        items: catalogue size; item ids are ``"i00000"``.. (zero-padded, at least 5 digits).
        sessions: number of sessions (ids ``"s0"``, ``"s1"``.. in order of start time); default
            ``2 * items``, at most 2,000,000. Every session has 2 to 50 clicks (mean about 5 unless
            ``mean_length`` says otherwise).
        seed: the same seed gives identical frames.
        mean_length: mean session length before the cap at 50 (at least 2; default 5). Lengths are
            ``1 + Geometric(1 / (mean_length - 1))``; ``benchmarks/scale_m2.py`` uses 4.1 for
            Amazon-M2's "about 4".
        skip_bad: ignored (nothing can be malformed).

    Returns:
        ``RawData`` with ``given_sessions=True``; ``events`` columns ``user`` (session id),
        ``item``, ``timestamp`` (int64 s), ``order`` (int64); ``items`` columns ``item``, ``title``,
        ``brand``, ``categories`` ([department, sub-category]), ``description``, ``price``, ``year``.
    """
    del skip_bad  # uniform loader signature; a generator has no bad lines
    if source is not None:
        raise UsageError("the synthetic source reads no files; drop --source and use --items/--sessions/--seed")
    if sessions is None:
        sessions = min(2 * items, DEFAULT_MAX_SESSIONS)
    if items < 1 or sessions < 1:
        raise UsageError(f"need at least one item and one session, got items={items} sessions={sessions}")
    Range(2, note="every session has at least 2 clicks").check("mean_length", mean_length)
    length_p = LENGTH_P if mean_length is None else 1.0 / (mean_length - 1.0)
    rng = np.random.default_rng(seed)
    catalogue = _catalogue(rng, items)
    events = _sessions(rng, catalogue, sessions, length_p)
    logger.info("synthetic: %d items in %d categories, %d sessions, %d events",
                items, catalogue.n_categories, sessions, len(events))
    return RawData(
        name="synthetic",
        events=events,
        items=catalogue.frame,
        sources={"generator": f"synthetic items={items} sessions={sessions} seed={seed}"
                            + (f" mean_length={mean_length:g}" if mean_length is not None else "")},
        given_sessions=True,
        time_note=f"synthetic clock: sessions start uniformly over {WINDOW_S // 86_400} days from "
                  f"2023-01-01 UTC, clicks {GAP_S[0]}-{GAP_S[1]} s apart",
    )


@dataclass
class _Catalogue:
    """Items in internal order: sorted by category, then by popularity rank inside the category.

    Internal index ``offsets[c] + r`` is the item of rank ``r`` in category ``c``; ``ids`` maps an
    internal index to its original id string (a seeded permutation, so ids do not reveal categories).
    """

    frame: pd.DataFrame  # items table in original-id order
    ids: np.ndarray  # (N,) object (str), original id of each internal index
    offsets: np.ndarray  # (C,) int64, first internal index of each category
    sizes: np.ndarray  # (C,) int64
    cdf: np.ndarray  # (N,) float64, category + within-category popularity CDF, see _popularity_cdf
    category_weight: np.ndarray  # (C,) float64, share of the catalogue, sums to 1

    @property
    def n_categories(self) -> int:
        return len(self.sizes)


def _catalogue(rng: np.random.Generator, n_items: int) -> _Catalogue:
    n_cat = n_categories_for(n_items)
    # Category sizes: at least one item each, the rest spread by lognormal weights.
    weight = rng.lognormal(0.0, 0.5, n_cat)
    sizes = 1 + rng.multinomial(n_items - n_cat, weight / weight.sum()).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    category = np.repeat(np.arange(n_cat), sizes)  # (N,)
    rank = np.arange(n_items) - offsets[category]  # (N,) popularity rank inside the category

    department_names = np.array(list(DEPARTMENTS))
    department = np.arange(n_cat) * len(DEPARTMENTS) // n_cat  # (C,)
    sub_names = np.array(_sub_category_names(department))  # (C,)

    # Per-category vocabulary: k in [8, 20] descriptor words, a brand pool of 3-8 brands.
    pool = np.array(DESCRIPTORS)
    vocab_size = rng.integers(8, 21, n_cat)
    vocab = np.argsort(rng.random((n_cat, len(pool))), axis=1)[:, :20]  # (C, 20), first vocab_size used
    brands = np.array([p + s for p in BRAND_PREFIXES for s in BRAND_SUFFIXES])
    brand_pool_size = rng.integers(3, 9, n_cat)
    brand_pool = rng.integers(0, len(brands), (n_cat, 8))  # (C, 8), first brand_pool_size used

    # Three distinct words of the item's category vocabulary (positions a, a + d1, a + d1 + d2 mod k,
    # with d1, d2 >= 1 and d1 + d2 < k), and a fourth, unconstrained one for the description.
    k = vocab_size[category]  # (N,)
    pick_a = (rng.random(n_items) * k).astype(np.int64)
    d1 = 1 + (rng.random(n_items) * (k - 2)).astype(np.int64)
    d2 = 1 + (rng.random(n_items) * (k - 1 - d1)).astype(np.int64)
    pick_d = (rng.random(n_items) * k).astype(np.int64)
    word_a, word_b, word_c, word_d = (vocab[category, pick % k]  # (N,) indices into the pool
                                      for pick in (pick_a, pick_a + d1, pick_a + d1 + d2, pick_d))
    capital = np.strings.capitalize(pool)  # the small pools are cased once, not per item
    third = rng.random(n_items) < 0.4  # some titles carry a third category word
    brand = brands[brand_pool[category, (rng.random(n_items) * brand_pool_size[category]).astype(np.int64)]]
    generic = np.array(GENERIC)[rng.integers(0, len(GENERIC), n_items)]
    letters = np.array(MODEL_LETTERS)
    model = _join(letters[rng.integers(0, len(letters), n_items)], letters[rng.integers(0, len(letters), n_items)],
                  "-", rng.integers(100, 10_000, n_items).astype(str))
    title = _join(brand, " ", capital[word_a], " ", np.where(third, np.strings.add(capital[word_c], " "), ""),
                  capital[word_b], " ", np.strings.title(sub_names)[category], " ", generic, " ", model)
    description = _join(capital[word_c], " ", sub_names[category], " from ", brand,
                        ", finished in ", pool[word_d], " ", pool[word_a], ". Part of our ",
                        department_names[department][category], " range.")

    # Price: lognormal per category (median 5..300); year: per-category launch era.
    log_median = rng.uniform(np.log(5.0), np.log(300.0), n_cat)
    spread = rng.uniform(0.2, 0.6, n_cat)
    price = np.round(np.exp(log_median[category] + spread[category] * rng.standard_normal(n_items)), 2)
    era = rng.integers(2000, 2020, n_cat)
    year = era[category] + rng.integers(0, 6, n_items)

    # Original ids: a seeded permutation of 0..N-1, zero-padded.
    width = max(5, len(str(n_items - 1)))
    number = rng.permutation(n_items)
    ids = np.strings.add("i", np.strings.zfill(number.astype(str), width)).astype(object)
    order = np.argsort(number)  # internal index of the item with original number 0, 1, ...
    frame = pd.DataFrame({
        "item": ids[order],
        "title": title[order],
        "brand": brand[order],
        "categories": [[d, s] for d, s in zip(department_names[department][category][order].tolist(),
                                              sub_names[category][order].tolist())],
        "description": description[order],
        "price": price[order],
        "year": year[order].astype(np.int64),
    })
    return _Catalogue(frame, ids, offsets, sizes, _popularity_cdf(category, rank, offsets, sizes),
                      sizes / sizes.sum())


def _sub_category_names(department: np.ndarray) -> list[str]:
    """Unique names: a department's nouns first, then ``modifier noun``, then numbered."""
    names = []
    first = np.searchsorted(department, department, side="left")
    for c, d in enumerate(department.tolist()):
        nouns = list(DEPARTMENTS.values())[d]
        j = c - int(first[c])
        noun, lap = nouns[j % len(nouns)], j // len(nouns)
        if lap == 0:
            names.append(noun)
        elif lap <= len(MODIFIERS):
            names.append(f"{MODIFIERS[lap - 1]} {noun}")
        else:
            names.append(f"{noun} {lap}")
    return names


def _popularity_cdf(category, rank, offsets, sizes) -> np.ndarray:
    """One sorted array holding every category's popularity CDF, shifted by the category index.

    Entry ``i`` is ``category[i] + P(rank <= rank[i] | category)``, so the values of category c lie
    in ``(c, c + 1]`` and ``searchsorted(cdf, c + u, side="right")`` with ``u`` in [0, 1) draws an
    item of category c with Zipf popularity.
    """
    weight = (rank + 1.0) ** -ZIPF_EXPONENT
    total = np.cumsum(weight)
    before = np.concatenate([[0.0], total])[offsets]  # (C,) sum of weights of earlier categories
    last = offsets + sizes - 1
    within = (total - before[category]) / (total[last] - before)[category]
    within[last] = 1.0  # exact, so a segment never spills into the next category
    return category + within


def _sessions(rng: np.random.Generator, cat: _Catalogue, n_sessions: int, length_p: float = LENGTH_P) -> pd.DataFrame:
    n_cat = cat.n_categories
    # Latent users, each with a home category where most of its sessions start.
    n_users = max(1, n_sessions // SESSIONS_PER_USER)
    home = rng.choice(n_cat, size=n_users, p=cat.category_weight)
    user = rng.integers(0, n_users, n_sessions)
    anywhere = rng.choice(n_cat, size=n_sessions, p=cat.category_weight)
    start_category = np.where(rng.random(n_sessions) < HOME_PROBABILITY, home[user], anywhere)

    length = np.minimum(1 + rng.geometric(length_p, n_sessions), MAX_LENGTH).astype(np.int64)  # (S,)
    start = np.concatenate([[0], np.cumsum(length)[:-1]])  # (S,) first event of each session
    n_events = int(length.sum())
    session = np.repeat(np.arange(n_sessions, dtype=np.int64), length)  # (E,)
    first = np.zeros(n_events, dtype=bool)
    first[start] = True

    # Category walk: drift flags (+-1) accumulated inside each session.
    drift = (rng.random(n_events) >= STAY_PROBABILITY) & ~first
    step = np.where(drift, np.where(rng.random(n_events) < 0.5, -1, 1), 0)
    walked = np.cumsum(step)
    category = (start_category[session] + walked - walked[start][session]) % n_cat  # (E,)
    del step, walked

    # Item walk inside the category: a "reset" click draws a rank from the category's popularity;
    # a "near" click moves +-(1, 2, 3..) ranks from the previous click. Ranks are the running sum
    # of the reset value and the moves since the last reset, wrapped to the category size.
    near = ~first & ~drift & (rng.random(n_events) < NEAR_PROBABILITY)
    del drift, first
    reset = np.flatnonzero(~near)
    u = rng.random(len(reset))
    drawn = np.searchsorted(cat.cdf, category[reset] + u, side="right") - cat.offsets[category[reset]]
    value = np.where(rng.random(n_events) < 0.5, -1, 1) * rng.geometric(0.5, n_events)  # moves
    value[reset] = drawn
    running = np.cumsum(value)
    anchor = np.zeros(n_events, dtype=np.int64)
    anchor[reset] = reset
    np.maximum.accumulate(anchor, out=anchor)  # (E,) index of the last reset at or before each click
    rank = (running - running[anchor] + value[anchor]) % cat.sizes[category]
    item = cat.offsets[category] + rank
    del near, value, running, anchor, rank, category

    # Time: sessions start uniformly over the window (ids follow start time), clicks 10-300 s apart.
    start_time = EPOCH_S + np.sort(rng.integers(0, WINDOW_S, n_sessions))
    gap = rng.integers(GAP_S[0], GAP_S[1] + 1, n_events)
    gap[start] = 0
    elapsed = np.cumsum(gap)
    timestamp = start_time[session] + elapsed - elapsed[start][session]
    del gap, elapsed

    # Object arrays of the ids, indexed per click: every click shares its session's (item's) string.
    session_ids = np.strings.add("s", np.arange(n_sessions).astype(str)).astype(object)
    return pd.DataFrame({
        "user": session_ids[session],
        "item": cat.ids[item],
        "timestamp": timestamp.astype(np.int64),
        "order": np.arange(n_events, dtype=np.int64),
    })


def _join(*parts) -> np.ndarray:
    """Element-wise concatenation of string arrays and scalars."""
    out = parts[0]
    for part in parts[1:]:
        out = np.strings.add(out, part)
    return np.asarray(out)
