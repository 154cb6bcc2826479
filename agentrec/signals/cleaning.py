"""Cleaning a raw generation into a usable LaMAR signal, and the aspect names.

:func:`clean_signal`: role labels, the echoed ``Item: ...`` line, aspect labels (``Usage scenario:``,
``Intent:``, ``Themes:``), markdown and quotes are stripped, the text stops where the model starts the
next example, whitespace is collapsed and the text is cut at a word boundary to ``max_chars``. An
empty result is retried by :func:`agentrec.signals.generate.generate_signals` with sampling, then kept
as ``status: "empty"``.

:data:`CLEANER_VERSION` is part of a signal set's identity: raise it when :func:`clean_signal` changes
what it keeps. This module imports nothing of agentrec.
"""

from __future__ import annotations

import re

from agentrec.core.errors import UsageError

CLEANER_VERSION = 2  # raise when clean_signal changes what it keeps: the set's identity records it
ASPECT_NAMES = ("usage", "intent", "summary")
# labels a model writes before the answer (the templates' own, and ones small models invent)
_ASPECT_LABEL = re.compile(r"^\s*(?:\*\*|__)?\s*(?:usage\s+scenarios?|usage|scenario|intents?|themes?|thematic\s+summary"
                           r"|summary|answer|response|output)\s*(?:\*\*|__)?\s*[:：]\s*(?:\*\*|__)?", re.IGNORECASE)
_ROLE_LABEL = re.compile(r"^\s*(?:<\|?[a-z_]+\|?>\s*)?(?:assistant|system|user|ai|bot|model)\s*[:：]\s*", re.IGNORECASE)
# a line that repeats the prompt's item or one of its metadata fields ("Genres: Action, Drama.")
_ECHO_LINE = re.compile(r"^\s*(?:item|movie|product|title|genres?|year|brand|categor(?:y|ies)|price)"
                        r"\s*[:：]", re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)


def parse_aspects(text: str | None) -> tuple[str, ...]:
    """``"usage, intent"`` -> ``("usage", "intent")``; None or empty -> every aspect."""
    if not text:
        return ASPECT_NAMES
    aspects = tuple(a.strip() for a in text.split(",") if a.strip())
    unknown = [a for a in aspects if a not in ASPECT_NAMES]
    if unknown:
        raise UsageError(f"unknown aspects {unknown}; choose from {', '.join(ASPECT_NAMES)}")
    return aspects


def clean_signal(text: str | None, *, max_chars: int = 240, item: str | None = None) -> str:
    """The usable signal in a raw generation, or ``""`` when there is none.

    Args:
        text: the model's output.
        max_chars: cut longer text at the last word boundary before this many characters.
        item: the item line shown in the prompt; an output that only repeats it (or its start) is empty.

    Keeps the first answer: after a line that echoes the item (``Item: ...``, ``Genres: ...``) or an
    aspect label (``Usage scenario: ...``) when there is one, up to the start of another example, and
    up to where it starts repeating itself (see :func:`_cut_loop`).
    """
    if not text:
        return ""
    text = text.replace("\r", "")
    text = _ROLE_LABEL.sub("", text.strip())
    lines = [line.strip() for line in text.split("\n")]
    labelled = [i for i, line in enumerate(lines) if _ASPECT_LABEL.match(line)]
    if labelled:  # the answer follows the first aspect label ("Usage scenario: ...")
        start = labelled[0]
        lines = [_ASPECT_LABEL.sub("", lines[start])] + lines[start + 1:]
    answer = []
    for line in lines:
        line = _ROLE_LABEL.sub("", line).strip()
        if not line:
            if answer:
                break  # a blank line ends the answer
            continue
        if _ECHO_LINE.match(line) or _ASPECT_LABEL.match(line):
            if answer:
                break  # the model went on to another example
            continue  # an echo of the prompt's item line
        answer.append(line)
    out = _cut_loop(" ".join(answer).replace("**", "").replace("__", "").split())
    out = out.strip().strip("\"'“”‘’`").strip()
    if item is not None and _is_echo(out, item):
        return ""  # nothing but (the start of) the prompt's item line again
    if len(out) > max_chars:
        cut = out[: max_chars + 1].rsplit(" ", 1)[0] if " " in out[:max_chars] else out[:max_chars]
        out = cut.rstrip(",;:-– ")
    return out if _WORD.search(out) else ""


def _cut_loop(words: list[str], n: int = 3) -> str:
    """The words before the first word n-gram that already occurred: a small model stuck in a loop
    ("love, love, love, ...", "war, action, romance, war, action, romance, ...") keeps its first round.

    Greedy decoding falls into such loops and then runs to the token limit; a signal made of one
    phrase repeated is worse for retrieval than the phrase once. Punctuation does not count
    ("love," and "love" are the same word).
    """
    keys = [" ".join(_WORD.findall(word.lower())) for word in words]
    seen = set()
    for start in range(len(words) - n + 1):
        gram = tuple(keys[start:start + n])
        if gram in seen:
            return " ".join(words[:start]).rstrip(",;:-– ")
        seen.add(gram)
    return " ".join(words)


def norm_words(text: str) -> list[str]:
    """Lower-cased words of ``text`` (runs of word characters), for comparing texts word by word."""
    return _WORD.findall(text.lower())


def _is_echo(text: str, item: str) -> bool:
    """``text`` is the start of ``item``, or starts like it and adds no word the item line lacks
    ("Heat (1995) - genre: Action" for "Heat (1995) - genres: Action, Crime")."""
    words, item_words = norm_words(text), norm_words(item)
    if not words:
        return False
    if item_words[: len(words)] == words:
        return True
    stem = {w.rstrip("s") for w in item_words}
    return words[:2] == item_words[:2] and all(w.rstrip("s") in stem for w in words)
