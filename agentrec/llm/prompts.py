"""Chats for the LLM-as-recommender strategies (SemSR section 3.2) and the LaMAR aspect prompts.

Prompts are data: one Jinja file per prompt in ``prompts/`` (or your own folder, ``--prompts DIR``),
rendered by :func:`agentrec.core.templates.environment` with ``StrictUndefined``, so a template that uses a
variable nobody passes fails loudly. Each file lists its variables in a comment at its top.

**A template is a chat.** It defines one Jinja block per role, ``{% block system %}`` and
``{% block user %}``; :func:`render_chat` renders each block on its own and returns the messages in
role order, ``[{"role": "system", "content": ...}, {"role": "user", "content": ...}]`` (a role whose
block is missing or renders empty is left out; ``user`` is required). Templates are
self-contained: no ``{% extends %}``.

Strategies (:data:`STRATEGIES`), each a sequence of steps; every step is one batched engine call
over all sessions:

=========  ===============================================  =========================
strategy   steps (template -> what its output is)           few-shot examples
=========  ===============================================  =========================
``fs``     ``fs.jinja`` -> title                            yes (SemSR Figure 2)
``zcot``   ``zcot_rationale.jinja`` -> rationale,           no
           ``zcot_title.jinja`` -> title
``fscot``  ``fscot.jinja`` -> rationale,                    yes, in both steps
           ``zcot_title.jinja`` -> title
=========  ===============================================  =========================

Few-shot examples come from the **training** split only: ``examples`` samples drawn with a seeded
generator, each shown as its most recent history items and the title of its target. By default one
draw serves every prompt of a run, so all prompts share a long identical prefix (vLLM's prefix
cache reuses it); ``vary_examples=True`` draws per session instead (seeded by the seed and the
sample's index).

Items are shown as one line each, built from the item text fields chosen in
:attr:`PromptConfig.fields` (default: the title only, as SemSR shows titles).

**Budgets.** A prompt must fit the engine's context (:attr:`agentrec.llm.engines.Engine.context_tokens`)
with the answer's ``max_new_tokens`` kept free; one 100 KB title would otherwise make a prompt of
hundreds of thousands of tokens. Given the engine (``PromptBuilder(..., engine=engine)``):

1. every item text (a session item's line, an example's next title, the item of an aspect prompt) is
   cut to :attr:`PromptConfig.item_chars` characters -- cheap, so a huge title never reaches a
   tokenizer whole -- and then to :attr:`PromptConfig.item_tokens` tokens of the engine's tokenizer
   (estimated where it has none), at a word boundary, ending in ``...``;
2. a rendered chat still over ``context_tokens - max_new_tokens`` is shrunk, re-rendering after each
   cut: first the few-shot examples go, the last one first (they illustrate the task; the session
   *is* the task); then the oldest session items, keeping the most recent (the ones that predict the
   next item best); then every remaining text (session items, the aspect item, the rationale) is
   cut to half the tokens, again and again down to 4 tokens;
3. a prompt that still does not fit (the template's own text fills the context) is a
   :class:`~agentrec.core.errors.UsageError`.

:attr:`PromptBuilder.cuts` counts what was cut (:class:`PromptCuts`); ``predict`` and
``signals generate`` report it. Without an engine (or one that does not tell its context) only
step 1 applies, with estimated token counts.

**Checking templates.** :func:`validate_templates` runs before any model loads: a Jinja syntax error
names the file and line, a variable agentrec does not pass or one the template must show but never
uses (:data:`TEMPLATE_CONTRACTS`, e.g. ``session``) names the file and the variable, and a trial
render with sample values catches what only shows when rendering.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from agentrec.core.errors import DataFormatError, NotFoundError, UsageError
from agentrec.core.templates import ITEM_FIELDS, _value, environment, load_template, prompts_dir, template_source
from agentrec.llm.base import estimate_chat_tokens, estimate_tokens

ROLES = ("system", "user")  # chat roles a template may define, in message order
_TURN_BLOCK = re.compile(r"(user|assistant)_([1-9][0-9]*)")  # demonstration turns, between system and user
ASPECTS = {"usage": "aspect_usage.jinja", "intent": "aspect_intent.jinja", "summary": "aspect_summary.jinja"}


@dataclass(frozen=True)
class Step:
    """One generation step of a strategy."""

    template: str  # file name inside the prompts folder
    output: str  # "rationale" (fed to the next step as `rationale`) or "title" (parsed and grounded)


@dataclass(frozen=True)
class Strategy:
    name: str
    steps: tuple[Step, ...]
    few_shot: bool  # whether the templates receive training examples

    @property
    def templates(self) -> tuple[str, ...]:
        return tuple(step.template for step in self.steps)


STRATEGIES: dict[str, Strategy] = {
    "fs": Strategy("fs", (Step("fs.jinja", "title"),), few_shot=True),
    "zcot": Strategy("zcot", (Step("zcot_rationale.jinja", "rationale"), Step("zcot_title.jinja", "title")),
                     few_shot=False),
    "fscot": Strategy("fscot", (Step("fscot.jinja", "rationale"), Step("zcot_title.jinja", "title")),
                      few_shot=True),
}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise UsageError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


@dataclass(frozen=True)
class PromptConfig:
    """What goes into a prompt. Defaults follow SemSR (titles only, a few training examples)."""

    examples: int = 3  # few-shot examples per prompt (fs, fscot); 0 for none
    seed: int = 0  # seeds the draw of the examples
    vary_examples: bool = False  # False: one draw for all prompts (shared prefix); True: one draw per session
    fields: tuple[str, ...] = ("title",)  # item text fields shown, from agentrec.core.templates.ITEM_FIELDS
    max_history: int = 10  # most recent items of the query session shown
    example_history: int = 5  # most recent items of each example's session shown
    prompts: str | None = None  # folder with your own templates (default: the shipped ones)
    item_noun: str | None = None  # "movie", "product"...; default from the dataset's name
    domain: str | None = None  # platform named in the system role; default from the dataset's name
    description_chars: int = 200  # descriptions are cut to this many characters
    item_chars: int = 600  # each item text shown is cut to this many characters, before any tokenizer sees it
    item_tokens: int = 160  # ... and then to this many tokens (the engine's tokenizer; estimated without one)

    def __post_init__(self):
        unknown = [f for f in self.fields if f not in ITEM_FIELDS]
        if unknown or not self.fields:
            raise UsageError(f"unknown item fields {unknown or '(none given)'}; choose from {', '.join(ITEM_FIELDS)}")
        for name in ("examples", "max_history", "example_history"):
            if getattr(self, name) < (0 if name == "examples" else 1):
                raise UsageError(f"prompt setting {name} must be {'>= 0' if name == 'examples' else '>= 1'}, "
                                 f"got {getattr(self, name)}")
        if self.item_chars < 16 or self.item_tokens < 8:
            raise UsageError(f"prompt settings item_chars must be >= 16 and item_tokens >= 8, got "
                             f"{self.item_chars} and {self.item_tokens}")


@dataclass
class PromptCuts:
    """What a :class:`PromptBuilder` cut to keep prompts within budget (see the module docstring)."""

    items: int = 0  # distinct items whose text was cut to item_chars / item_tokens
    prompts: int = 0  # prompts still over the context after that, shrunk to fit
    examples_dropped: int = 0  # few-shot examples left out of those prompts
    session_items_dropped: int = 0  # oldest session items left out of those prompts

    def to_dict(self) -> dict:
        return asdict(self)


def cut_text(text: str, *, max_chars: int, max_tokens: int, count: Callable[[list[str]], list[int]]) -> str:
    """``text`` cut to at most ``max_chars`` characters, then to at most ``max_tokens`` tokens by ``count``.

    The character cut is first and cheap: a 100 KB title never reaches a tokenizer whole. The token
    cut keeps the share of characters the budget allows, recounts, and repeats (a few times at most).
    A cut text ends at a word boundary when there is one in its second half, then ``...``; a text
    that fits is returned unchanged.

    Args:
        text: the text to cut.
        max_chars: most characters kept, ``...`` included.
        max_tokens: most tokens kept, as ``count`` counts them.
        count: texts -> their token counts (an engine's ``count_tokens``).
    """
    if len(text) > max_chars:
        text = _cut_chars(text, max_chars)
    if len(text.encode("utf-8")) + 4 <= max_tokens:
        return text  # a tokenizer makes at most about one token a byte: surely fits, no need to count
    whole = text
    for _ in range(4):
        n = count([text])[0]
        if n <= max_tokens:
            return text
        text = _cut_chars(whole, max(4, int(len(text) * max_tokens / n * 0.9)))
    return _cut_chars(whole, max(4, max_tokens // 4))  # at most 4 bytes a character


def _cut_chars(text: str, n: int) -> str:
    """``text`` in at most ``n`` characters: cut at a word boundary (when one is in the second half) plus ``...``."""
    if len(text) <= n:
        return text
    head = text[: max(1, n - 3)]
    space = head.rfind(" ")
    if space >= len(head) // 2:
        head = head[:space]
    return head.rstrip(" ,;:-–—") + "..."


def vocabulary(dataset_name: str) -> tuple[str, str]:
    """``(item_noun, domain)`` for a dataset name: MovieLens is movies, everything else products."""
    name = dataset_name.lower()
    if name.startswith("ml-") or "movielens" in name or "movie" in name:
        return "movie", "an online movie platform"
    return "product", "an e-commerce platform"


def render_chat(template, variables: dict) -> list[dict]:
    """Render a chat template (one block per message) to a list of messages in role order.

    Blocks ``system`` and ``user`` are the first and the last message. Few-shot demonstrations may be
    given as earlier turns, blocks ``user_1``, ``assistant_1``, ``user_2``, ``assistant_2``...: a chat
    model then sees each example answered in its own voice, which small models copy far more faithfully
    than examples pasted into one message. Empty blocks are left out.

    Raises:
        ValueError: the template has no ``user`` block, a block that is not a message, or a turn
            without its pair.
        jinja2.UndefinedError: the template uses a variable that ``variables`` lacks.
    """
    blocks = template.blocks
    order = chat_order(template)
    context = template.new_context(dict(variables))
    chat = []
    try:
        for role, block in order:
            if block in blocks:
                content = "".join(blocks[block](context)).strip()
                if content:
                    chat.append({"role": role, "content": content})
    except Exception:
        # as Template.render does: the traceback then points at the template's lines, not compiled code
        template.environment.handle_exception()
    return chat


def chat_order(template) -> list[tuple[str, str]]:
    """``(role, block name)`` of a chat template's messages in order (see :func:`render_chat`).

    Raises:
        ValueError: the template is not a chat template (see :func:`render_chat`).
    """
    blocks = template.blocks
    turns: dict[int, set[str]] = {}
    unknown = []
    for name in blocks:
        match = _TURN_BLOCK.fullmatch(name)
        if match:
            turns.setdefault(int(match[2]), set()).add(match[1])
        elif name not in ROLES:
            unknown.append(name)
    if "user" not in blocks or unknown:
        problem = f"blocks {sorted(unknown)} are not chat messages" if unknown else "it has no {% block user %}"
        raise UsageError(f"template {template.name} is not a chat template: {problem}; define the blocks "
                         f"{', '.join(ROLES)} and, for demonstrations, user_1, assistant_1, user_2, ...")
    unpaired = [f"{sorted({'user', 'assistant'} - roles)[0]}_{n}" for n, roles in sorted(turns.items()) if len(roles) < 2]
    if unpaired:
        raise UsageError(f"template {template.name}: demonstration turns come in pairs; missing "
                         f"{{% block {unpaired[0]} %}}" + (f" and {len(unpaired) - 1} more" if len(unpaired) > 1 else ""))
    order = [("system", "system")]
    for n in sorted(turns):
        order += [("user", f"user_{n}"), ("assistant", f"assistant_{n}")]
    order.append(("user", "user"))
    return order


def chat_digest(chat: list[dict]) -> str:
    """sha256 of a chat's roles and contents (the prompt id is its first 16 hex digits)."""
    digest = hashlib.sha256()
    for message in chat:
        digest.update(message["role"].encode())
        digest.update(b"\0")
        digest.update(message["content"].encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


# ================================================================================================ checking templates
@dataclass(frozen=True)
class TemplateContract:
    """What agentrec passes a template, and which of those variables the template must use."""

    given: tuple[str, ...]  # the variables of every render
    required: tuple[str, ...]  # without them the run would quietly do something else (see _WHY)
    few_shot: tuple[str, ...] = ()  # also required when the run asks for few-shot examples


_SESSION_VARIABLES = ("domain", "item_noun", "session", "examples")
TEMPLATE_CONTRACTS: dict[str, TemplateContract] = {
    "fs.jinja": TemplateContract(_SESSION_VARIABLES, ("session",), few_shot=("examples",)),
    "fscot.jinja": TemplateContract(_SESSION_VARIABLES, ("session",), few_shot=("examples",)),
    "zcot_rationale.jinja": TemplateContract(_SESSION_VARIABLES, ("session",)),
    # the title step of both chains of thought: fscot passes examples too, zcot an empty list
    "zcot_title.jinja": TemplateContract(_SESSION_VARIABLES + ("rationale",), ("session", "rationale")),
    **{file: TemplateContract(("domain", "item_noun", "item"), ("item",)) for file in ASPECTS.values()},
}
_WHY = {
    "session": "without it every prompt is the same and the model never sees the customer's session",
    "rationale": "without it the title step ignores the reasoning of the first step",
    "item": "without it every item gets the same prompt",
    "examples": "the run asks for few-shot examples and they would never be shown (use --examples 0 for a "
                "template without them)",
}
# values for a trial render: what a real run passes, in miniature
_SAMPLE_VALUES = {
    "domain": "an online movie platform", "item_noun": "movie", "session": ["Heat (1995)", "Jaws (1975)"],
    "examples": [{"session": ["Alien (1979)", "Fargo (1996)"], "next": "Vertigo (1958)", "sample": 0}],
    "rationale": "They like tense thrillers.", "item": "Heat (1995) - genres: Action, Crime",
}


def validate_templates(names, folder: str | Path | None = None, *, few_shot: bool = False) -> None:
    """Check templates before any model loads; the first problem raises, naming the file.

    For each template: the file exists and is UTF-8, it parses (a syntax error names the line), it
    is a chat template (:func:`chat_order`), it uses no variable agentrec does not pass it and every
    variable it must show (:data:`TEMPLATE_CONTRACTS`; a template not listed there gets only the
    first checks), and a trial render with sample values succeeds and ends with a user message.

    Args:
        names: template file names, e.g. ``STRATEGIES["fscot"].templates``.
        folder: the ``--prompts`` folder (default: the shipped templates).
        few_shot: the run shows few-shot examples, so the templates that take them must use them.

    Raises:
        NotFoundError: ``folder`` or a template in it does not exist.
        DataFormatError: a template is broken; the message names its file (and line, where known).
    """
    if folder is not None and not Path(folder).is_dir():
        raise NotFoundError(f"--prompts {folder}: " + ("not a folder" if Path(folder).exists() else "no such folder"))
    for name in dict.fromkeys(names):
        _validate_template(name, folder, few_shot=few_shot)


def validate_strategy(strategy: str | Strategy, config: PromptConfig | None = None) -> Strategy:
    """The strategy, once :func:`validate_templates` passed its templates under ``config``."""
    plan = strategy if isinstance(strategy, Strategy) else get_strategy(strategy)
    config = config or PromptConfig()
    validate_templates(plan.templates, config.prompts, few_shot=plan.few_shot and config.examples > 0)
    return plan


def validate_aspects(aspects, folder: str | Path | None = None) -> None:
    """:func:`validate_templates` for the LaMAR aspect templates of ``aspects`` (e.g. ``("usage",)``)."""
    unknown = [a for a in aspects if a not in ASPECTS]
    if unknown:
        raise UsageError(f"unknown aspects {unknown}; choose from {', '.join(ASPECTS)}")
    validate_templates([ASPECTS[a] for a in aspects], folder)


def _validate_template(name: str, folder, *, few_shot: bool) -> None:
    from jinja2 import TemplateSyntaxError, meta

    path = (Path(folder) if folder is not None else prompts_dir()) / name
    if not path.is_file():
        raise NotFoundError(f"{path} does not exist: a --prompts folder must hold every template the run uses; "
                            f"start from a copy of the shipped {prompts_dir() / name}")
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataFormatError(path, None, f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    env = environment(str(folder) if folder is not None else None)
    try:
        tree = env.parse(source, name, str(path))
        template = env.get_template(name)
    except TemplateSyntaxError as error:
        raise DataFormatError(path, error.lineno, f"Jinja syntax error: {error.message}") from None
    try:
        chat_order(template)
    except ValueError as error:
        raise DataFormatError(path, None, str(error)) from None
    contract = TEMPLATE_CONTRACTS.get(name)
    if contract is None:
        return
    used = meta.find_undeclared_variables(tree) - set(env.globals)
    unknown = sorted(used - set(contract.given))
    if unknown:
        raise DataFormatError(path, _first_use(tree, unknown[0]),
                              f"'{unknown[0]}' is undefined: agentrec passes {name} only "
                              f"{', '.join(contract.given)}")
    required = contract.required + (contract.few_shot if few_shot else ())
    missing = [variable for variable in required if variable not in used]
    if missing:
        raise DataFormatError(path, None, f"the template never uses the variable '{missing[0]}': {_WHY[missing[0]]} "
                                          f"(see the shipped {prompts_dir() / name})")
    try:
        chat = render_chat(template, {key: _SAMPLE_VALUES[key] for key in contract.given})
    except Exception as error:  # anything a template can do wrong with real values is the template's fault
        raise DataFormatError(path, _template_line(error, template), f"rendering with sample values failed: "
                                                                     f"{type(error).__name__}: {error}") from None
    if not chat or chat[-1]["role"] != "user":
        raise DataFormatError(path, None, "its {% block user %} renders empty with sample values: the model "
                                          "would get no question")


def _first_use(tree, variable: str) -> int | None:
    """The line where a template first reads ``variable``."""
    from jinja2 import nodes

    lines = [node.lineno for node in tree.find_all(nodes.Name) if node.name == variable and node.ctx == "load"]
    return min(lines) if lines else None


def _template_line(error: BaseException, template) -> int | None:
    """The template line an exception was raised at (Jinja rewrites tracebacks to template lines)."""
    line, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == template.filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# ================================================================================================ builder
class PromptBuilder:
    """Renders the chats of one dataset under one :class:`PromptConfig`.

    Example::

        builder = PromptBuilder(dataset, PromptConfig(examples=3, fields=("title", "genres")), engine=engine)
        chats = builder.chats("fs.jinja", [0, 1, 2], max_new_tokens=32)  # test samples 0..2, cut to fit
        chats = builder.chats("zcot_title.jinja", [0], rationales=["They like thrillers."])
        builder.cuts                                                 # PromptCuts(items=..., prompts=...)

        # ad-hoc sessions (internal item ids, oldest first) instead of a split's
        adhoc = PromptBuilder(dataset, samples=Samples.from_lists([[50, 172, 181]], [0]), engine=engine)
        chats = adhoc.chats("fs.jinja", [0])
    """

    def __init__(self, dataset, config: PromptConfig | None = None, *, split: str = "test", samples=None,
                 engine=None):
        """
        Args:
            dataset: a :class:`~agentrec.data.dataset.PreparedDataset`.
            config: what goes into the prompts (default :class:`PromptConfig`).
            split: split whose samples are the query sessions; examples always come from train.
            samples: the query sessions themselves, in place of ``split``'s: any
                :class:`~agentrec.data.dataset.Samples`, e.g. ad-hoc histories as
                ``Samples.from_lists(histories, [0] * len(histories))``. Only their histories are read:
                a target never reaches a prompt, so a placeholder target is safe. With
                ``vary_examples``, session ``i`` draws its examples as sample ``i`` of a split would.
            engine: the engine the chats are for: its tokenizer counts tokens and its context bounds
                the prompts (see "Budgets" in the module docstring); None counts by estimate and
                cuts item texts only.
        """
        self.dataset = dataset
        self.config = config or PromptConfig()
        self.engine = engine
        self.cuts = PromptCuts()
        self._labels: dict[int, str] = {}  # item id -> its line, cut to the item budget
        self._next_titles: dict[int, str] = {}  # item id -> its title as an example's answer, cut
        self._cut_items: set[int] = set()
        self.split = split
        if self.split == "train" and samples is None:
            raise UsageError("query sessions must come from valid or test: few-shot examples are drawn from train")
        noun, domain = vocabulary(self.dataset.name)
        self.item_noun = self.config.item_noun or noun
        self.domain = self.config.domain or domain
        self.samples = self.dataset.split(self.split) if samples is None else samples
        self._templates: dict[str, object] = {}
        self._columns: dict[str, list] | None = None
        self._shared_examples: list[dict] | None = None
        self._titles: list[str] | None = None

    # ------------------------------------------------------------------ templates
    def template(self, name: str):
        if name not in self._templates:
            self._templates[name] = load_template(name, self.config.prompts)
        return self._templates[name]

    def template_digest(self, name: str) -> str:
        """sha256 of the template's source: part of every generation cache key."""
        return hashlib.sha256(template_source(self.template(name)).encode("utf-8")).hexdigest()

    # ------------------------------------------------------------------ budgets
    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of plain texts by the engine's tokenizer (estimated without one)."""
        counter = getattr(self.engine, "count_tokens", None)
        return list(counter(texts)) if counter is not None else [estimate_tokens(t) for t in texts]

    def count_chat_tokens(self, chats: list[list[dict]]) -> list[int]:
        """Prompt tokens of chats by the engine's tokenizer and chat template (estimated without them)."""
        counter = getattr(self.engine, "count_chat_tokens", None)
        return list(counter(chats)) if counter is not None else [estimate_chat_tokens(c) for c in chats]

    @property
    def context_tokens(self) -> int | None:
        """The engine's context length, or None (no engine, or one that does not tell)."""
        return getattr(self.engine, "context_tokens", None) if self.engine is not None else None

    def prompt_limit(self, max_new_tokens: int | None) -> int | None:
        """Most prompt tokens a chat may have when ``max_new_tokens`` are kept for the answer; None: no limit known."""
        context = self.context_tokens
        if context is None or max_new_tokens is None:
            return None
        if context - max_new_tokens < 1:
            raise UsageError(f"{max_new_tokens} new tokens fill the engine's whole context of {context} tokens: "
                             f"ask for fewer new tokens")
        return context - max_new_tokens

    def _cut_item_text(self, text: str, item_id: int) -> str:
        cut = cut_text(text, max_chars=self.config.item_chars, max_tokens=self.config.item_tokens,
                       count=self.count_tokens)
        if cut != text:
            self._cut_items.add(int(item_id))
            self.cuts.items = len(self._cut_items)
        return cut

    # ------------------------------------------------------------------ items
    def item_label(self, item_id: int) -> str:
        """One line for an item from the configured fields, e.g. ``Heat (1995) - genres: Action, Crime``,
        cut to the item budget (:attr:`PromptConfig.item_chars`, :attr:`PromptConfig.item_tokens`)."""
        item_id = int(item_id)
        if item_id not in self._labels:
            self._labels[item_id] = self._cut_item_text(self._full_label(item_id), item_id)
        return self._labels[item_id]

    def _full_label(self, item_id: int) -> str:
        if self._columns is None:
            items = self.dataset.items
            self._columns = {f: items[f].astype(object).tolist() if f in items else None for f in ITEM_FIELDS}
        row = int(item_id) - 1
        value = {f: (_value(column[row]) if column is not None else None) for f, column in self._columns.items()}
        title = str(value["title"]) if value["title"] and str(value["title"]).strip() else f"item {int(item_id)}"
        parts = []
        for name in self.config.fields:
            v = value[name]
            if name == "title" or v in (None, "", []):
                continue
            if name == "year":
                if f"({v})" not in title:
                    title = f"{title} ({v})"
                continue
            if isinstance(v, list):
                v = ", ".join(v)
            if name == "description" and len(str(v)) > self.config.description_chars:
                v = str(v)[: self.config.description_chars].rsplit(" ", 1)[0] + "..."
            parts.append(f"{name}: {v}")
        return " - ".join([title, *parts])

    def labels(self, item_ids) -> list[str]:
        return [self.item_label(i) for i in item_ids]

    # ------------------------------------------------------------------ examples (train only)
    def examples_for(self, index: int) -> list[dict]:
        """Few-shot examples for query sample ``index``: ``[{"session": [...], "next": title}, ...]``."""
        n = self.config.examples
        if n == 0:
            return []
        if not self.config.vary_examples:
            if self._shared_examples is None:
                self._shared_examples = self._draw(np.random.default_rng(self.config.seed), n)
            return self._shared_examples
        return self._draw(np.random.default_rng([self.config.seed, int(index)]), n)

    def _draw(self, rng, n: int) -> list[dict]:
        train = self.dataset.train
        if len(train) == 0:
            raise UsageError(f"{self.dataset.name}: the training split is empty; few-shot prompts need "
                             f"training examples (use examples=0, or the zcot strategy)")
        lengths = train.lengths
        eligible = np.flatnonzero(lengths >= 2)  # a one-item session shows little of the pattern
        eligible = eligible if len(eligible) >= n else np.arange(len(train))
        picked = rng.choice(eligible, size=min(n, len(eligible)), replace=False)
        if self._titles is None:
            self._titles = self.dataset.titles()
        titles = self._titles
        out = []
        for i in picked:
            history = train.history_of(int(i))[-self.config.example_history:]
            target = int(train.target[i])
            if target not in self._next_titles:
                title = str(titles[target - 1] or "")
                self._next_titles[target] = self._cut_item_text(title if title.strip() else f"item {target}", target)
            out.append({"session": self.labels(history), "next": self._next_titles[target], "sample": int(i)})
        return out

    # ------------------------------------------------------------------ chats
    def variables(self, index: int, *, few_shot: bool, rationale: str | None = None) -> dict:
        """The variables of every session template for query sample ``index``."""
        history = self.samples.history_of(int(index))[-self.config.max_history:]
        values = {
            "domain": self.domain,
            "item_noun": self.item_noun,
            "session": self.labels(history),
            "examples": self.examples_for(index) if few_shot else [],
        }
        if rationale is not None:
            values["rationale"] = rationale
        return values

    def chats(self, template: str, indices, *, few_shot: bool = True, rationales: list[str] | None = None,
              max_new_tokens: int | None = None) -> list[list[dict]]:
        """One chat per query sample in ``indices`` (same order), rendered from ``template``.

        Args:
            template: template file name, e.g. ``"fs.jinja"``.
            indices: sample indices into the query split.
            few_shot: pass training examples (else ``examples`` is an empty list).
            rationales: one step-1 text per index, for ``zcot_title.jinja``.
            max_new_tokens: tokens kept free for the answer; with an engine that tells its context,
                every chat is shrunk to fit (module docstring, "Budgets"). None: no whole-prompt check.
        """
        tmpl = self.template(template)
        indices = [int(i) for i in indices]
        if rationales is not None and len(rationales) != len(indices):
            raise ValueError(f"{len(rationales)} rationales for {len(indices)} sessions")
        values = [self.variables(i, few_shot=few_shot, rationale=None if rationales is None else rationales[j])
                  for j, i in enumerate(indices)]
        return self._fit(tmpl, values, max_new_tokens)

    def step_chats(self, strategy: Strategy, step: Step, indices, *, rationales=None,
                   max_new_tokens: int | None = None) -> list[list[dict]]:
        return self.chats(step.template, indices, few_shot=strategy.few_shot, rationales=rationales,
                          max_new_tokens=max_new_tokens)

    def aspect_chats(self, aspect: str, item_ids, *, max_new_tokens: int | None = None) -> list[list[dict]]:
        """One LaMAR aspect chat (``usage``, ``intent`` or ``summary``) per item, in the order given;
        ``max_new_tokens`` as in :meth:`chats`."""
        if aspect not in ASPECTS:
            raise UsageError(f"unknown aspect {aspect!r}; choose one of {', '.join(ASPECTS)}")
        tmpl = self.template(ASPECTS[aspect])
        values = [{"domain": self.domain, "item_noun": self.item_noun, "item": self.item_label(int(i))}
                  for i in item_ids]
        return self._fit(tmpl, values, max_new_tokens)

    # ------------------------------------------------------------------ whole prompts
    def _fit(self, tmpl, values: list[dict], max_new_tokens: int | None) -> list[list[dict]]:
        """Render each chat; shrink the ones over :meth:`prompt_limit` (one tokenizer pass for all first)."""
        chats = [render_chat(tmpl, v) for v in values]
        limit = self.prompt_limit(max_new_tokens)
        if limit is None or not chats:
            return chats
        for j, n in enumerate(self.count_chat_tokens(chats)):
            if n > limit:
                chats[j] = self._shrink(tmpl, values[j], n, limit, max_new_tokens)
        return chats

    def _shrink(self, tmpl, values: dict, n: int, limit: int, max_new_tokens: int) -> list[dict]:
        """The chat of ``values`` cut to at most ``limit`` prompt tokens, in the order of the module docstring."""
        values = dict(values)
        self.cuts.prompts += 1

        def render(**changes):
            chat = render_chat(tmpl, {**values, **changes})
            return chat, self.count_chat_tokens([chat])[0]

        def fits(**changes) -> bool:
            return render(**changes)[1] <= limit

        chat = None
        examples = list(values.get("examples") or ())
        if examples:  # 1. few-shot examples, the last one first: keep the first j, the most that fit
            keep = _most_that_fit(0, len(examples), lambda j: fits(examples=examples[:j]))
            values["examples"] = examples[:keep]
            self.cuts.examples_dropped += len(examples) - keep
            chat, n = render()
        session = list(values.get("session") or ())
        if n > limit and len(session) > 1:  # 2. the oldest session items: keep the j most recent that fit
            keep = _most_that_fit(1, len(session), lambda j: fits(session=session[-j:]))
            values["session"] = session[-keep:]
            self.cuts.session_items_dropped += len(session) - keep
            chat, n = render()
        budget = self.config.item_tokens
        while n > limit and budget > 4:  # 3. every remaining text, half the tokens each round
            budget //= 2

            def cut(text: str) -> str:
                return cut_text(text, max_chars=self.config.item_chars, max_tokens=budget, count=self.count_tokens)

            if values.get("session"):
                values["session"] = [cut(text) for text in values["session"]]
            for key in ("item", "rationale"):
                if isinstance(values.get(key), str):
                    values[key] = cut(values[key])
            chat, n = render()
        if n > limit:
            raise UsageError(f"template {tmpl.name}: the prompt needs {n:,} tokens even with no examples, one session "
                             f"item and every text cut to a few tokens, but the engine's context of "
                             f"{self.context_tokens:,} tokens leaves {limit:,} after the {max_new_tokens} new tokens: "
                             f"use a model with a longer context, fewer new tokens, or a shorter template")
        return chat


def _most_that_fit(low: int, high: int, fits: Callable[[int], bool]) -> int:
    """The largest ``j`` in ``[low, high)`` with ``fits(j)``, by bisection (``fits`` holds up to some ``j``, then
    no more; ``high`` is known not to fit); ``low`` when nothing fits. A few renders, not one per item."""
    if not fits(low):
        return low
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def shipped_templates() -> list[Path]:
    """Every prompt template shipped with agentrec (``*.jinja`` in :func:`agentrec.core.templates.prompts_dir`)."""

    return sorted(prompts_dir().glob("*.jinja"))
