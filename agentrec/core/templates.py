"""Item text from a Jinja template, and the one Jinja environment every prompt uses.

Templates are data (``prompts/``): rendered with ``StrictUndefined``, so a template that uses a
variable nobody passes fails loudly instead of printing an empty string.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

ITEM_FIELDS = ("title", "brand", "categories", "genres", "year", "price", "description")
DEFAULT_ITEM_TEMPLATE = "item_text.jinja"


def prompts_dir() -> Path:
    """The shipped templates: ``agentrec/prompts`` in a wheel, ``prompts/`` in a source checkout."""
    package = Path(__file__).resolve().parents[1]  # agentrec/
    for candidate in (package / "prompts", package.parent / "prompts"):
        if (candidate / DEFAULT_ITEM_TEMPLATE).exists():
            return candidate
    raise FileNotFoundError("agentrec's prompt templates are missing from this installation")


@lru_cache(maxsize=8)
def environment(folder: str | None = None):
    """The Jinja environment for ``folder`` (default: the shipped templates)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(
        loader=FileSystemLoader(folder or str(prompts_dir())),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )


def load_template(name: str = DEFAULT_ITEM_TEMPLATE, folder: str | Path | None = None):
    """A template by file name from ``folder`` (your own templates) or the shipped ones."""
    return environment(str(folder) if folder else None).get_template(name)


def template_source(template) -> str:
    """The template's source text, part of every cache key that depends on it."""
    return Path(template.filename).read_text()


def _value(value):
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None and str(v)]
    try:
        import pandas as pd

        if value is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return value


def item_texts(items, *, template=None, signals: dict[str, list[str | None]] | None = None) -> list[str]:
    """One text per item row (in table order) rendered from ``template``.

    Args:
        items: the dataset's item table (``PreparedDataset.items``).
        template: a Jinja template (default: ``prompts/item_text.jinja``).
        signals: optional aspect name -> one text per item (None where missing), included in the
            text in the order given.
    """
    template = template or load_template()
    columns = {field: items[field].astype(object).tolist() if field in items else [None] * len(items)
               for field in ITEM_FIELDS}
    texts = []
    for row in range(len(items)):
        values = {field: _value(columns[field][row]) for field in ITEM_FIELDS}
        values["signals"] = {
            aspect: texts_[row] for aspect, texts_ in (signals or {}).items() if texts_[row]
        }
        texts.append(" ".join(template.render(**values).split()))
    return texts


def texts_digest(texts: list[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()
