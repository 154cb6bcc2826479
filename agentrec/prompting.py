"""Chats for the LLM-as-recommender strategies (SemSR section 3.2) and the LaMAR aspect prompts.

Prompts are data: one Jinja file per prompt in ``prompts/`` (or your own folder, ``--prompts DIR``),
rendered by :func:`agentrec.text.environment` with ``StrictUndefined``, so a template that uses a
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
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentrec.text import ITEM_FIELDS, _value, load_template, template_source

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
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


@dataclass(frozen=True)
class PromptConfig:
    """What goes into a prompt. Defaults follow SemSR (titles only, a few training examples)."""

    examples: int = 3  # few-shot examples per prompt (fs, fscot); 0 for none
    seed: int = 0  # seeds the draw of the examples
    vary_examples: bool = False  # False: one draw for all prompts (shared prefix); True: one draw per session
    fields: tuple[str, ...] = ("title",)  # item text fields shown, from agentrec.text.ITEM_FIELDS
    max_history: int = 10  # most recent items of the query session shown
    example_history: int = 5  # most recent items of each example's session shown
    prompts: str | None = None  # folder with your own templates (default: the shipped ones)
    item_noun: str | None = None  # "movie", "product"...; default from the dataset's name
    domain: str | None = None  # platform named in the system role; default from the dataset's name
    description_chars: int = 200  # descriptions are cut to this many characters

    def __post_init__(self):
        unknown = [f for f in self.fields if f not in ITEM_FIELDS]
        if unknown or not self.fields:
            raise ValueError(f"unknown item fields {unknown or '(none given)'}; choose from {', '.join(ITEM_FIELDS)}")
        for name in ("examples", "max_history", "example_history"):
            if getattr(self, name) < (0 if name == "examples" else 1):
                raise ValueError(f"prompt setting {name} must be {'>= 0' if name == 'examples' else '>= 1'}, "
                                 f"got {getattr(self, name)}")


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
        raise ValueError(f"template {template.name} is not a chat template: {problem}; define the blocks "
                         f"{', '.join(ROLES)} and, for demonstrations, user_1, assistant_1, user_2, ...")
    unpaired = [f"{sorted({'user', 'assistant'} - roles)[0]}_{n}" for n, roles in sorted(turns.items()) if len(roles) < 2]
    if unpaired:
        raise ValueError(f"template {template.name}: demonstration turns come in pairs; missing "
                         f"{{% block {unpaired[0]} %}}" + (f" and {len(unpaired) - 1} more" if len(unpaired) > 1 else ""))
    order = [("system", "system")]
    for n in sorted(turns):
        order += [("user", f"user_{n}"), ("assistant", f"assistant_{n}")]
    order.append(("user", "user"))
    context = template.new_context(dict(variables))
    chat = []
    for role, block in order:
        if block in blocks:
            content = "".join(blocks[block](context)).strip()
            if content:
                chat.append({"role": role, "content": content})
    return chat


def chat_digest(chat: list[dict]) -> str:
    """sha256 of a chat's roles and contents (the prompt id is its first 16 hex digits)."""
    digest = hashlib.sha256()
    for message in chat:
        digest.update(message["role"].encode())
        digest.update(b"\0")
        digest.update(message["content"].encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


class PromptBuilder:
    """Renders the chats of one dataset under one :class:`PromptConfig`.

    Example::

        builder = PromptBuilder(dataset, PromptConfig(examples=3, fields=("title", "genres")))
        chats = builder.chats("fs.jinja", [0, 1, 2])               # test samples 0..2
        chats = builder.chats("zcot_title.jinja", [0], rationales=["They like thrillers."])
    """

    def __init__(self, dataset, config: PromptConfig | None = None, *, split: str = "test"):
        """
        Args:
            dataset: a :class:`~agentrec.data.dataset.PreparedDataset`.
            config: what goes into the prompts (default :class:`PromptConfig`).
            split: split whose samples are the query sessions; examples always come from train.
        """
        self.dataset = dataset
        self.config = config or PromptConfig()
        self.split = split
        if self.split == "train":
            raise ValueError("query sessions must come from valid or test: few-shot examples are drawn from train")
        noun, domain = vocabulary(self.dataset.name)
        self.item_noun = self.config.item_noun or noun
        self.domain = self.config.domain or domain
        self.samples = self.dataset.split(self.split)
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

    # ------------------------------------------------------------------ items
    def item_label(self, item_id: int) -> str:
        """One line for an item from the configured fields, e.g. ``Heat (1995) - genres: Action, Crime``."""
        if self._columns is None:
            items = self.dataset.items
            self._columns = {f: items[f].astype(object).tolist() if f in items else None for f in ITEM_FIELDS}
        row = int(item_id) - 1
        value = {f: (_value(column[row]) if column is not None else None) for f, column in self._columns.items()}
        title = str(value["title"]) if value["title"] else f"item {int(item_id)}"
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
            raise ValueError(f"{self.dataset.name}: the training split is empty; few-shot prompts need "
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
            out.append({"session": self.labels(history), "next": titles[target - 1] or f"item {target}",
                        "sample": int(i)})
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

    def chats(self, template: str, indices, *, few_shot: bool = True, rationales: list[str] | None = None
              ) -> list[list[dict]]:
        """One chat per query sample in ``indices`` (same order), rendered from ``template``.

        Args:
            template: template file name, e.g. ``"fs.jinja"``.
            indices: sample indices into the query split.
            few_shot: pass training examples (else ``examples`` is an empty list).
            rationales: one step-1 text per index, for ``zcot_title.jinja``.
        """
        tmpl = self.template(template)
        indices = [int(i) for i in indices]
        if rationales is not None and len(rationales) != len(indices):
            raise ValueError(f"{len(rationales)} rationales for {len(indices)} sessions")
        return [render_chat(tmpl, self.variables(i, few_shot=few_shot,
                                                 rationale=None if rationales is None else rationales[j]))
                for j, i in enumerate(indices)]

    def step_chats(self, strategy: Strategy, step: Step, indices, *, rationales=None) -> list[list[dict]]:
        return self.chats(step.template, indices, few_shot=strategy.few_shot, rationales=rationales)

    def aspect_chats(self, aspect: str, item_ids) -> list[list[dict]]:
        """One LaMAR aspect chat (``usage``, ``intent`` or ``summary``) per item, in the order given."""
        if aspect not in ASPECTS:
            raise ValueError(f"unknown aspect {aspect!r}; choose one of {', '.join(ASPECTS)}")
        tmpl = self.template(ASPECTS[aspect])
        return [render_chat(tmpl, {"domain": self.domain, "item_noun": self.item_noun,
                                   "item": self.item_label(int(i))}) for i in item_ids]


def shipped_templates() -> list[Path]:
    """Every prompt template shipped with agentrec (``*.jinja`` in :func:`agentrec.text.prompts_dir`)."""
    from agentrec.text import prompts_dir

    return sorted(prompts_dir().glob("*.jinja"))
