"""Reading the item title out of an LLM's answer, and comparing titles.

An instruction-tuned LLM asked for "the next item's title" answers in many shapes: a bare title, a
quoted title inside a sentence, "Title: ...", a numbered list, a title followed by "because ...", or a
refusal. :func:`parse_title` finds the title (or None) with patterns that run in linear time on any
input (an anchored whitespace run, no nested quantifiers), so a degenerate output cannot hang a batch.
"""

from __future__ import annotations

import re

# ================================================================================================ parsing
# "Title:", "Next Movie Title:", "Answer:", "Recommendation:", "Prediction:", "Movie:" ... and what follows
# and "The next movie is:", "My recommendation would be" ...
_MARKER = re.compile(r"\b(?:(?:title|answer|recommendation|recommended\s+\w+|prediction|movie|product|item)\s*[:：]"
                     r"|(?:next\s+(?:\w+\s+){0,2}|recommendation\s+|prediction\s+|answer\s+)"
                     r"(?:is|would\s+be|will\s+be|could\s+be)\b[:：]?)",
                     re.IGNORECASE)
_BULLET = re.compile(r"^\s*(?:[-*•>]+|\d{1,2}\s*[.)]|\(\d{1,2}\)|#+)\s*")
_SESSION_LABEL = re.compile(r"session\s*[:：]\s*", re.IGNORECASE)
_REFUSAL = re.compile(r"^(?:i'?m sorry|i am sorry|sorry\b|i cannot|i can'?t|as an ai)", re.IGNORECASE)
_DOUBLE_QUOTED = re.compile(r"[\"“”«»](.+?)[\"“”«»]")
_SINGLE_QUOTED = re.compile(r"^['‘’`](.+?)['‘’`](?=\s|$|[.,;:!?)])")
_SINGLE_QUOTED_INSIDE = re.compile(r"(?<!\w)['‘`](.+?)['’`](?!\w)")  # not an apostrophe: "movie's"
_EXPLANATION = re.compile(
    # (?<!\s) anchors a whitespace run at its start: without it a long run of spaces is quadratic
    r"(?:(?<!\s)\s+because\b|(?<!\s)\s+(?:since|which is|which was|due to|given that)\b"
    r"|(?:[,;:]|\s[-–—])\s*(?:because|since|as|which|this|it|that|the customer|they|based|given|due)\b"
    r"|\s\((?:because|since|as|this|it|which|based)\b).*$",
    re.IGNORECASE | re.DOTALL,
)
_SENTENCE_END = re.compile(r"\.\s+(?=[A-Z])")
_DOTTED_END = re.compile(r"(?<![\w.])(?:\w\.){2,}$")  # a title ending in "L.A.", "U.S.A."
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "st", "jr", "sr", "vs", "vol", "no", "pt", "ft", "mt", "co", "inc"}


def parse_title(text: str | None, *, max_chars: int = 200) -> str | None:
    """The item title in an LLM's output, or None when there is none.

    Handles: a ``Title:``-style prefix (``Next Movie Title:``, ``Answer:``...; the title may be on
    the next line), list numbering and bullets, markdown emphasis, quotes around the title (or a
    quoted title inside a sentence), explanations after the title (``..., because ...``, a second
    sentence), preamble lines that end with a colon, code fences, refusals, and empty or runaway
    output (longer than ``max_chars`` after cleaning).
    """
    if not text or not text.strip():
        return None
    text = text.replace("\r", "")
    marker = _MARKER.search(text)
    if marker:
        lines = text[marker.end() :].split("\n")
    else:
        lines = text.split("\n")
    candidate = None
    for line in lines:
        line = line.strip()
        if not line or line.startswith("```") or (line.endswith(":") and not marker):
            continue  # blank, a code fence, or a preamble ("Here is my prediction:")
        candidate = line
        break
    if candidate is None:
        return None
    title = _clean_title(candidate)
    if not title or len(title) > max_chars or not re.search(r"\w", title) or _REFUSAL.match(title):
        return None
    return title


def _clean_title(line: str) -> str:
    line = line.replace("**", "").replace("__", "").strip()
    line = _BULLET.sub("", line).strip()
    inner = _MARKER.match(line) or _SESSION_LABEL.match(line)  # "1. Title: X", an echoed "Session: 'X', ..."
    if inner:
        line = line[inner.end() :].strip()
    quoted = _SINGLE_QUOTED.match(line) or _DOUBLE_QUOTED.search(line) or _SINGLE_QUOTED_INSIDE.search(line)
    if quoted and len(quoted.group(1).strip()) >= 2:
        line = quoted.group(1)
    else:
        line = _EXPLANATION.sub("", line)
        line = _first_sentence(line)
    line = line.strip().strip("\"'“”‘’`«»*").strip()
    end = line.rstrip(",;:!-–— ").strip()
    if _DOTTED_END.search(end):  # "Escape from L.A.": that full stop is part of the title
        return end
    return end.rstrip(".,;:!-–— ").strip()


def _first_sentence(line: str) -> str:
    """Cut at the first full stop that ends a sentence (not "Dr. Strangelove", not "L.A. Confidential")."""
    for match in _SENTENCE_END.finditer(line):
        before = line[: match.start()].rsplit(None, 1)[-1] if line[: match.start()].strip() else ""
        word = before.rstrip(".").lower()
        if word in _ABBREVIATIONS or len(word) <= 1 or "." in before:
            continue
        return line[: match.start()]
    return line


def normalise_title(title: str) -> str:
    """Lower case, no year in brackets, a trailing article moved to the front ("Godfather, The" is
    "the godfather"), letters and digits only: for exact-title comparison."""
    title = re.sub(r"\(\d{4}\)", " ", title.lower()).strip()
    title = re.sub(r"^(.*),\s*(the|a|an)$", r"\2 \1", title)
    return " ".join(re.findall(r"\w+", title))
