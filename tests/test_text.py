"""Item text templates: the default is stated here, and a broken template fails loudly."""

import pandas as pd
import pytest
from jinja2 import UndefinedError

from agentrec.core.templates import item_texts, load_template


def items(**columns):
    n = len(next(iter(columns.values())))
    return pd.DataFrame({"item_id": range(1, n + 1), "original_id": [str(i) for i in range(n)], **columns})


def test_default_template_renders_each_field_it_has():
    table = items(title=["Toy Story", None], year=pd.array([1995, None], dtype="Int64"),
                  genres=[["Animation", "Comedy"], []], brand=[None, "Acme"],
                  description=["x" * 400, None], price=[None, 3.5])
    first, second = item_texts(table)
    assert first.startswith("Toy Story (1995). Genres: Animation, Comedy. xxx")
    assert first.endswith("...") and len(first) < 400  # descriptions are cut at 300 characters
    assert second == "untitled item. Brand: Acme."


def test_signals_are_appended_in_order():
    table = items(title=["Heat"])
    (text,) = item_texts(table, signals={"usage": ["late-night viewing"], "intent": ["a tense thriller"]})
    assert text == "Heat. Usage: late-night viewing Intent: a tense thriller"


def test_missing_variable_fails_loudly(tmp_path):
    (tmp_path / "mine.jinja").write_text("{{ title }} by {{ director }}")
    with pytest.raises(UndefinedError, match="director"):
        item_texts(items(title=["Heat"]), template=load_template("mine.jinja", tmp_path))
