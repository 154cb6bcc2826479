"""Merge the signal sets of shards (``agentrec signals generate --shard I/N``) into one set.

Each shard writes its own set folder with the same settings; :func:`merge_signal_sets` checks that the
parts belong together (the same dataset fingerprint and the same :data:`~agentrec.signals.store.IDENTITY_KEYS`
but the shard: catalogue, engine, sampling, cleaning, fields; the same templates per aspect), refuses an
``(item, aspect)`` pair found in two parts (shards are disjoint; a pair twice means the same shard was given
twice or shards of two runs were mixed), reports the coverage per aspect, and writes the merged set whole
(built aside and swapped into place, :func:`agentrec.core.fsutil.atomic_dir`) as an ordinary set that
``signals report`` and ``--signals`` read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agentrec.core import fsutil
from agentrec.core.errors import MismatchError, UsageError
from agentrec.signals.store import IDENTITY_KEYS, MANIFEST, RECORDS, SignalSet

logger = logging.getLogger(__name__)

# manifest keys the parts must share (the shard itself aside)
MERGE_KEYS = ("dataset_fingerprint",) + tuple(key for key in IDENTITY_KEYS if key != "shard")


def merge_signal_sets(out: str | Path, parts, *, force: bool = False) -> dict:
    """Merge the signal sets ``parts`` into the new set ``out``.

    Args:
        out: the merged set folder; must not hold a set already unless ``force``.
        parts: the shards' set folders.
        force: replace what ``out`` holds.

    Returns:
        The coverage: ``{"items": n_items, "parts": k, "aspects": {aspect: {"pairs": found, "expected":
        n_items, "missing": [first item ids missing, at most 20], "missing_count": m}}}``.

    Raises:
        SignalSetMismatchError / MismatchError: the parts were made with other settings (the key is named).
        UsageError: a pair in two parts (named with both folders), or ``out`` already holds something.
    """
    parts = [SignalSet(p) for p in parts]
    if not parts:
        raise UsageError("give at least one signal set to merge")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UsageError(f"{out} is not empty; merge into a new folder (or --force to replace it)")
    if any(out.resolve() == part.path.resolve() for part in parts):
        raise UsageError(f"{out} is one of the parts; merge into a new folder")
    manifests = [part.manifest for part in parts]  # NotFoundError for a folder that is not a set
    first = manifests[0]
    for part, manifest in zip(parts[1:], manifests[1:]):
        for key in MERGE_KEYS:
            if manifest.get(key) != first.get(key):
                raise MismatchError(f"signal sets {part.path} and {parts[0].path} differ in {key}: "
                                    f"{manifest.get(key)!r} vs {first.get(key)!r}; only shards of one run merge")
        if sorted(manifest["aspects"]) != sorted(first["aspects"]) or manifest["templates"] != first["templates"]:
            raise MismatchError(f"signal sets {part.path} and {parts[0].path} differ in their aspects or templates "
                                f"({manifest['aspects']} vs {first['aspects']}); only shards of one run merge")

    records, origin = {}, {}
    for part in parts:
        found, load = part.read()
        if load.torn_bytes or load.duplicates:
            logger.warning("%s: %s", part.records_path, load.describe())
        for pair, record in found.items():
            if pair in records:
                raise UsageError(f"item {pair[0]}, aspect {pair[1]} is in both {origin[pair]} and {part.path}; "
                                 "shards are disjoint, so the same shard was given twice or shards of two runs mixed")
            records[pair], origin[pair] = record, part.path

    n_items = int(first["items"])
    coverage = {"items": n_items, "parts": len(parts), "aspects": {}}
    for aspect in first["aspects"]:
        missing = [item for item in range(1, n_items + 1) if (item, aspect) not in records]
        coverage["aspects"][aspect] = {"pairs": n_items - len(missing), "expected": n_items,
                                       "missing": missing[:20], "missing_count": len(missing)}
    manifest = dict(first, shard=None, merged_from=[str(part.path.resolve()) for part in parts])
    ordered = [records[pair] for pair in sorted(records)]
    with fsutil.atomic_dir(out) as temp:
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (temp / RECORDS).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered),
                                    encoding="utf-8")
    logger.info("merged %d signals of %d sets into %s", len(ordered), len(parts), out)
    return coverage


def describe_coverage(coverage: dict) -> str:
    """One line per aspect: pairs found of expected, and the first missing items."""
    lines = []
    for aspect, found in coverage["aspects"].items():
        line = f"{aspect}: {found['pairs']:,} of {found['expected']:,} items"
        if found["missing_count"]:
            shown = ", ".join(str(i) for i in found["missing"][:10])
            more = found["missing_count"] - min(10, found["missing_count"])
            line += f"; missing items {shown}" + (f" and {more:,} more" if more else "")
        lines.append(line)
    return "\n".join(lines)
