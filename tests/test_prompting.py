"""Prompt templates and chats: every shipped template renders, a missing variable fails loudly, and
few-shot examples come from the training split only.

The toy catalogue (:func:`toy_movies`) is twelve real film titles. Train sessions use items 1-7 only;
valid and test sessions use items 8-12 (and test targets 1, 4, 10, 8), so a few-shot example that
showed a test item would be a leak the tests can see.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from jinja2 import UndefinedError, meta

from agentrec.core.templates import environment, item_texts, load_template, prompts_dir
from agentrec.data.dataset import PreparedDataset, Samples
from agentrec.llm.prompts import (
    ASPECTS,
    STRATEGIES,
    PromptBuilder,
    PromptConfig,
    chat_digest,
    get_strategy,
    render_chat,
    shipped_templates,
    vocabulary,
)

TITLES = ["Toy Story (1995)", "Heat (1995)", "Casablanca (1942)", "Alien (1979)", "Fargo (1996)", "Vertigo (1958)",
          "Jaws (1975)", "Titanic (1997)", "Psycho (1960)", "Amadeus (1984)", "Rocky (1976)", "Brazil (1985)"]
GENRES = [["Animation", "Comedy"], ["Action", "Crime"], ["Drama", "Romance"], ["Horror", "Sci-Fi"],
          ["Crime", "Drama"], ["Mystery", "Thriller"], ["Action", "Horror"], ["Drama", "Romance"],
          ["Horror", "Thriller"], ["Drama"], ["Action", "Drama"], ["Sci-Fi"]]
TRAIN_ITEMS = set(range(1, 8))


def toy_movies(path, name: str = "ml-toy") -> PreparedDataset:
    """Twelve films; train sessions over items 1-7, test sessions over 8-12 (see the module docstring)."""
    items = pd.DataFrame({"item_id": range(1, 13), "original_id": [str(i) for i in range(1, 13)],
                          "title": TITLES, "genres": GENRES,
                          "year": pd.array([int(t[-5:-1]) for t in TITLES], dtype="Int64")})
    train = Samples.from_lists([[1], [1, 2], [1, 2, 3], [4, 5], [4, 5, 6], [6, 7], [2, 7], [3, 5, 7]],
                               [2, 3, 4, 6, 7, 1, 5, 2], sessions=["u1", "u1", "u1", "u2", "u2", "u3", "u4", "u5"])
    valid = Samples.from_lists([[8, 9]], [10], sessions=["u6"])
    test = Samples.from_lists([[8, 9], [10, 11, 12], [11, 12], [9, 12]], [1, 2, 4, 8],
                              sessions=["u7", "u8", "u9", "u10"])
    dataset = PreparedDataset(items=items, train=train, valid=valid, test=test, stats={"dataset": name})
    dataset.save(path)
    return dataset


@pytest.fixture
def toy(tmp_path) -> PreparedDataset:
    return toy_movies(tmp_path / "toy")


def user_text(chat) -> str:
    return next(m["content"] for m in chat if m["role"] == "user")


# ---------------------------------------------------------------------------------------------- templates
SESSION_TEMPLATES = {"fs.jinja", "zcot_rationale.jinja", "zcot_title.jinja", "fscot.jinja"}
ASPECT_TEMPLATES = set(ASPECTS.values())


def test_every_shipped_template_renders_with_strict_undefined(toy):
    names = {path.name for path in shipped_templates()}
    # a new template must be added here, so that this test renders it
    assert names == SESSION_TEMPLATES | ASPECT_TEMPLATES | {"item_text.jinja"}
    builder = PromptBuilder(toy, PromptConfig(examples=2))
    for name in sorted(SESSION_TEMPLATES):
        (chat,) = builder.chats(name, [0], rationales=["They like thrillers."] if name == "zcot_title.jinja" else None)
        assert [m["role"] for m in chat] == ["system", "user"], name
        assert all(m["content"] == m["content"].strip() and m["content"] for m in chat)
        assert "'Titanic (1997)', 'Psycho (1960)'" in user_text(chat)  # the query session, quoted as in Figure 2
    for aspect in ASPECTS:
        (chat,) = builder.aspect_chats(aspect, [5])
        # two answered demonstrations, then the item alone
        assert [m["role"] for m in chat] == ["system", "user", "assistant", "user", "assistant", "user"], aspect
        assert all(m["content"] == m["content"].strip() and m["content"] for m in chat)
        assert chat[-1]["content"].startswith("Item: Fargo (1996)")
    assert item_texts(toy.items)[0].startswith("Toy Story (1995)")


def test_every_template_lists_its_variables_in_its_top_comment():
    env = environment()
    for path in shipped_templates():
        source = path.read_text()
        header = re.match(r"\{#-?(.*?)-?#\}", source, re.DOTALL)
        assert header, f"{path.name} has no comment at its top"
        used = meta.find_undeclared_variables(env.parse(source))
        assert used, path.name
        for variable in used:
            assert re.search(rf"\b{variable}\b", header.group(1)), f"{path.name}: '{variable}' is not listed"


def test_fs_prompt_follows_semsr_figure_2(toy):
    (chat,) = PromptBuilder(toy, PromptConfig(examples=1)).chats("fs.jinja", [1])
    system, user = chat[0]["content"], chat[1]["content"]
    assert system == "You are a helpful recommendation system for an online movie platform."
    assert user.startswith("Your task is to predict the title of the next movie that a customer is going to "
                           "engage with, based on their session data. The output should only contain the "
                           "predicted title of the movie and nothing else.")
    assert "Here are a few examples:" in user and user.count("Predicted Next Movie Title:") == 1
    assert user.endswith("Session: 'Amadeus (1984)', 'Rocky (1976)', 'Brazil (1985)'\nNext Movie Title:")


def test_missing_variable_fails_loudly(tmp_path, toy):
    shutil.copytree(prompts_dir(), tmp_path / "mine")
    fs = tmp_path / "mine" / "fs.jinja"
    fs.write_text(fs.read_text().replace("{{ domain }}", "{{ platform_name }}"))
    builder = PromptBuilder(toy, PromptConfig(prompts=str(tmp_path / "mine")))
    with pytest.raises(UndefinedError, match="platform_name"):
        builder.chats("fs.jinja", [0])
    # the title step of a chain of thought needs the rationale of step 1
    with pytest.raises(UndefinedError, match="rationale"):
        PromptBuilder(toy).chats("zcot_title.jinja", [0])


def test_a_template_must_be_a_chat(tmp_path):
    (tmp_path / "plain.jinja").write_text("Predict the next title after {{ session }}.")
    (tmp_path / "odd.jinja").write_text("{% block user %}hi{% endblock %}{% block tool %}x{% endblock %}")
    with pytest.raises(ValueError, match="no \\{% block user %\\}"):
        render_chat(load_template("plain.jinja", tmp_path), {"session": []})
    with pytest.raises(ValueError, match="not chat messages"):
        render_chat(load_template("odd.jinja", tmp_path), {})
    (tmp_path / "user_only.jinja").write_text("{% block user %}\n  Hello {{ name }}.\n{% endblock %}")
    assert render_chat(load_template("user_only.jinja", tmp_path), {"name": "Ada"}) == \
        [{"role": "user", "content": "Hello Ada."}]


def test_demonstrations_as_earlier_turns(tmp_path):
    (tmp_path / "turns.jinja").write_text(
        "{% block user %}Item: {{ x }}{% endblock %}{% block assistant_2 %}b{% endblock %}"
        "{% block user_10 %}Item: c{% endblock %}{% block assistant_10 %}{% endblock %}"
        "{% block user_2 %}Item: B{% endblock %}{% block system %}S{% endblock %}"
        "{% block assistant_1 %}a{% endblock %}{% block user_1 %}Task.\n\nItem: A{% endblock %}")
    chat = render_chat(load_template("turns.jinja", tmp_path), {"x": "Heat"})
    # numeric order (10 after 2), block order in the file does not matter, an empty block is left out
    assert [(m["role"], m["content"]) for m in chat] == [
        ("system", "S"), ("user", "Task.\n\nItem: A"), ("assistant", "a"), ("user", "Item: B"),
        ("assistant", "b"), ("user", "Item: c"), ("user", "Item: Heat")]
    (tmp_path / "unpaired.jinja").write_text("{% block user_1 %}A{% endblock %}{% block user %}B{% endblock %}")
    with pytest.raises(ValueError, match="missing \\{% block assistant_1 %\\}"):
        render_chat(load_template("unpaired.jinja", tmp_path), {})
    (tmp_path / "zero.jinja").write_text("{% block user_0 %}A{% endblock %}{% block user %}B{% endblock %}")
    with pytest.raises(ValueError, match="user_0"):
        render_chat(load_template("zero.jinja", tmp_path), {})


def test_own_templates_folder_replaces_the_shipped_ones(tmp_path, toy):
    shutil.copytree(prompts_dir(), tmp_path / "mine")
    fs = tmp_path / "mine" / "fs.jinja"
    fs.write_text(fs.read_text().replace("You are a helpful recommendation system", "You are a film buff"))
    shipped, mine = PromptBuilder(toy), PromptBuilder(toy, PromptConfig(prompts=str(tmp_path / "mine")))
    assert mine.chats("fs.jinja", [0])[0][0]["content"].startswith("You are a film buff")
    assert shipped.chats("fs.jinja", [0])[0][0]["content"].startswith("You are a helpful recommendation system")
    assert mine.template_digest("fs.jinja") != shipped.template_digest("fs.jinja")


# ---------------------------------------------------------------------------------------------- few-shot examples
def test_examples_come_from_training_samples_only(toy):
    titles = toy.titles()
    for split in ("test", "valid"):
        for seed in range(5):
            for vary in (False, True):
                builder = PromptBuilder(toy, PromptConfig(examples=4, seed=seed, vary_examples=vary), split=split)
                for index in range(len(builder.samples)):
                    examples = builder.examples_for(index)
                    assert len(examples) == 4
                    for example in examples:
                        i = example["sample"]
                        assert example["next"] == titles[toy.train.target[i] - 1]
                        assert example["session"] == [titles[j - 1] for j in toy.train.history_of(i)]
                        shown = {titles.index(t) + 1 for t in example["session"] + [example["next"]]}
                        assert shown <= TRAIN_ITEMS  # never a valid or test item
    with pytest.raises(ValueError, match="train"):
        PromptBuilder(toy, split="train")


def test_examples_are_seeded_and_counted(toy):
    def drawn(config, index=0):
        return [e["sample"] for e in PromptBuilder(toy, config).examples_for(index)]

    assert drawn(PromptConfig(examples=3, seed=1)) == drawn(PromptConfig(examples=3, seed=1))
    assert len({tuple(drawn(PromptConfig(examples=3, seed=s))) for s in range(6)}) > 1
    # one draw for the run: every prompt shares its examples (a shared prefix); per session on request
    shared = PromptBuilder(toy, PromptConfig(examples=3, seed=2))
    assert shared.examples_for(0) == shared.examples_for(3)
    varied = [drawn(PromptConfig(examples=3, seed=2, vary_examples=True), i) for i in range(4)]
    assert len({tuple(v) for v in varied}) > 1
    assert varied == [drawn(PromptConfig(examples=3, seed=2, vary_examples=True), i) for i in range(4)]
    # sessions of two or more items are preferred; the count is configurable, 0 means none
    assert all(len(toy.train.history_of(i)) >= 2 for i in drawn(PromptConfig(examples=5, seed=3)))
    (chat,) = PromptBuilder(toy, PromptConfig(examples=0)).chats("fs.jinja", [0])
    assert "examples" not in user_text(chat) and "Predicted Next" not in user_text(chat)
    (chat,) = PromptBuilder(toy, PromptConfig(examples=2)).chats("fs.jinja", [0])
    assert user_text(chat).count("Predicted Next Movie Title:") == 2
    # zcot never shows examples; fscot shows them in both steps
    builder = PromptBuilder(toy, PromptConfig(examples=2))
    zcot, fscot = get_strategy("zcot"), get_strategy("fscot")
    for step in zcot.steps:
        (chat,) = builder.step_chats(zcot, step, [0], rationales=["r"] if step.output == "title" else None)
        assert "Title: " + toy.titles()[0] not in user_text(chat) and "examples" not in user_text(chat)
    for step in fscot.steps:
        (chat,) = builder.step_chats(fscot, step, [0], rationales=["r"] if step.output == "title" else None)
        assert user_text(chat).count("Next Movie Title: ") == 2


# ---------------------------------------------------------------------------------------------- items and settings
def test_item_fields_shown(toy):
    builder = PromptBuilder(toy, PromptConfig(fields=("title", "year", "genres")))
    assert builder.item_label(2) == "Heat (1995) - genres: Action, Crime"  # the year is already in the title
    toy.items.loc[1, "title"] = "Heat"
    assert PromptBuilder(toy, PromptConfig(fields=("title", "year"))).item_label(2) == "Heat (1995)"
    assert PromptBuilder(toy).item_label(2) == "Heat"
    assert PromptBuilder(toy, PromptConfig(fields=("title", "brand"))).item_label(2) == "Heat"  # no such column
    with pytest.raises(ValueError, match="unknown item fields"):
        PromptConfig(fields=("title", "director"))
    with pytest.raises(ValueError, match="examples"):
        PromptConfig(examples=-1)


def test_vocabulary_and_strategies():
    assert vocabulary("ml-100k") == ("movie", "an online movie platform")
    assert vocabulary("amazon2014-beauty") == ("product", "an e-commerce platform")
    assert [s.output for s in STRATEGIES["zcot"].steps] == ["rationale", "title"]
    assert STRATEGIES["fscot"].templates == ("fscot.jinja", "zcot_title.jinja") and STRATEGIES["fscot"].few_shot
    with pytest.raises(ValueError, match="fs, zcot, fscot"):
        get_strategy("cot")


def test_chats_keep_order_and_digests_differ(toy):
    builder = PromptBuilder(toy, PromptConfig(examples=1))
    chats = builder.chats("zcot_title.jinja", [3, 0, 1], few_shot=False, rationales=["a", "b", "c"])
    assert ["'Psycho (1960)', 'Brazil (1985)'" in user_text(c) for c in chats] == [True, False, False]
    assert "Reasoning: b" in user_text(chats[1])
    assert len({chat_digest(c) for c in chats}) == 3 and chat_digest(chats[0]) == chat_digest(list(chats[0]))
    with pytest.raises(ValueError, match="2 rationales for 3 sessions"):
        builder.chats("zcot_title.jinja", [3, 0, 1], rationales=["a", "b"])
    assert np.array_equal(builder.samples.target, toy.test.target)
