"""One call from a source name to a prepared dataset on disk."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from agentrec.core.errors import UsageError
from agentrec.data import protocols as P
from agentrec.data.dataset import PreparedDataset, check_output_folder
from agentrec.data.prepare import prepare
from agentrec.data.sources import SOURCES, get_loader

logger = logging.getLogger(__name__)


def make_protocol(name: str, **options):
    """Protocol dataclass by name; an option the protocol does not take is an error, not ignored."""
    try:
        cls = P.PROTOCOLS[name]
    except KeyError:
        raise UsageError(f"unknown protocol {name!r}; choose one of: {', '.join(P.PROTOCOLS)}") from None
    accepted = {f for f in inspect.signature(cls).parameters}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UsageError(f"protocol {name!r} takes no option {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}")
    return cls(**options)


def load_source(name: str, source: str | Path | None = None, *, skip_bad: bool = False, **options):
    """Run the loader ``name`` with the options it accepts (others must be None)."""
    spec = SOURCES.get(name)
    loader = get_loader(name)
    if spec.needs_source and source is None:
        raise UsageError(f"dataset {name!r} needs --source: {spec.help}")
    accepted = set(inspect.signature(loader).parameters)
    given = {k: v for k, v in options.items() if v is not None}
    unused = sorted(set(given) - accepted)
    if unused:
        raise UsageError(f"dataset {name!r} takes no option {', '.join('--' + u.replace('_', '-') for u in unused)}")
    passed = given
    return loader(source, skip_bad=skip_bad, **passed) if source is not None else loader(skip_bad=skip_bad, **passed)


def prepare_dataset(
    name: str,
    *,
    out: str | Path,
    source: str | Path | None = None,
    protocol: str | None = None,
    skip_bad: bool = False,
    protocol_options: dict | None = None,
    loader_options: dict | None = None,
    force: bool = False,
) -> PreparedDataset:
    """Load ``name`` from ``source``, apply ``protocol`` (default: the dataset's usual one), save to ``out``.

    ``out`` is written whole or not at all. If it already holds this very dataset (same fingerprint)
    it is kept; another dataset there is replaced only with ``force`` (see
    :meth:`PreparedDataset.save`). ``out`` is checked before any loading starts.
    """

    check_output_folder(out)

    protocol_options = dict(protocol_options or {})
    loader_options = dict(loader_options or {})
    protocol_name = protocol or SOURCES[name].default_protocol if name in SOURCES else protocol
    # --seed is the generator's seed for synthetic data and the user-split seed for semsr.
    if "seed" in protocol_options and protocol_name != "semsr":
        protocol_options.pop("seed")
    if loader_options.get("seed") is not None and name != "synthetic":
        loader_options.pop("seed")
    proto = make_protocol(protocol_name, **protocol_options)
    raw = load_source(name, source, skip_bad=skip_bad, **loader_options)
    for key, value in raw.report.counts.items():
        logger.info("load report: %s = %d", key, value)
    dataset = prepare(raw, proto)
    dataset.save(out, force=force)
    return dataset
