"""Knowledge experts: loading and validating passages, the BM25 index and
its cache, the facts put into a prompt within the context, the card and the
answer's passages (scripted backend; no real model)."""

from __future__ import annotations

import json

import pytest

from p2pnet import wire
from p2pnet.experts.errors import ExpertsError, ExpertSpecError, KnowledgeError
from p2pnet.experts.expert import Expert
from p2pnet.experts.knowledge import (
    CONTEXT_HEADER, MAX_PASSAGE_CHARS, KnowledgeBase, Passage, content_hash, fit_budget, load_passages, tokens,
)
from p2pnet.experts.scripted import ScriptedBackend
from p2pnet.experts.spec import build_expert, parse_expert_spec
from p2pnet.wire import ChatMessage, PromptBody

ELEMENTS = [
    {"id": "W", "title": "Tungsten", "text": "Tungsten is the element with symbol W and atomic number 74."},
    {"id": "Fe", "title": "Iron", "text": "Iron is the element with symbol Fe and atomic number 26."},
    {"id": "As", "title": "Arsenic", "text": "Arsenic is the element with symbol As and atomic number 33."},
    {"id": "Au", "title": "Gold", "text": "Gold is the element with symbol Au and atomic number 79."},
]


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def chem(tmp_path):
    folder = tmp_path / "chemistry"
    folder.mkdir()
    return jsonl(folder / "passages.jsonl", ELEMENTS)


def question(text: str, max_tokens: int = 32) -> PromptBody:
    return PromptBody((ChatMessage("user", text),), max_tokens, temperature=0.0)


# ------------------------------------------------------------ loading


def test_a_jsonl_file_loads_with_its_name_and_hash(chem):
    kb = KnowledgeBase.load(chem)
    assert (kb.name, len(kb), kb.warnings) == ("chemistry", 4, ())  # "passages" names nothing: its folder does
    assert kb.passages[0] == Passage("W", ELEMENTS[0]["text"], "Tungsten")
    assert kb.sha256 == content_hash(kb.passages) and len(kb.sha256) == 64


def test_ids_default_to_the_line_and_the_hash_follows_the_passages_not_the_layout(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text('{"text": "One."}\n\n{"text": "Two.", "id": 7}\n', encoding="utf-8")
    kb = KnowledgeBase.load(path)
    assert kb.name == "facts" and [p.id for p in kb.passages] == ["facts:1", "7"]
    spaced = tmp_path / "spaced.jsonl"
    spaced.write_text('{"id": "facts:1", "text": " One. "}\n{"text": "Two.", "id": "7", "title": ""}\n')
    assert KnowledgeBase.load(spaced).sha256 == kb.sha256


def test_a_folder_of_text_files_is_split_into_passages(tmp_path):
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# Tungsten\n\nSymbol W.\n\nAtomic number 74.\n\n## Iron\nSymbol Fe.\n")
    (root / "sub" / "b.txt").write_text("Gold is Au.\n")
    (root / "ignored.json").write_text("{}")
    kb = KnowledgeBase.load(root)
    assert kb.name == "notes"
    assert [(p.id, p.title, p.text) for p in kb.passages] == [
        ("a.md#1", "Tungsten", "Symbol W.\n\nAtomic number 74."),
        ("a.md#2", "Iron", "Symbol Fe."),
        ("sub/b.txt#1", "b", "Gold is Au."),
    ]


@pytest.mark.parametrize("content, message", [
    ("", "holds no passages"),
    ("\n  \n", "holds no passages"),
    ('{"text": "ok"}\n{"text": "broken"\n', "bad.jsonl:2: not JSON"),
    ('["a list"]\n', "bad.jsonl:1: a passage must be a JSON object"),
    ('{"title": "no text"}\n', "bad.jsonl:1: 'text' must be a non-empty string"),
    ('{"text": "   "}\n', "bad.jsonl:1: 'text' must be a non-empty string"),
    ('{"text": "a", "title": 3}\n', "bad.jsonl:1: 'title' must be a string"),
    ('{"text": "a", "id": ""}\n', "bad.jsonl:1: 'id' must be"),
    ('{"text": "a", "id": true}\n', "bad.jsonl:1: 'id' must be"),
    ('{"text": "a", "id": "' + "x" * 129 + '"}\n', "bad.jsonl:1: 'id' must be"),
    ('{"text": "a", "id": "x"}\n{"text": "b", "id": "x"}\n', "bad.jsonl:2: id 'x' is used twice"),
])
def test_a_bad_jsonl_file_is_one_error_naming_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(KnowledgeError) as exc:
        KnowledgeBase.load(path)
    assert message in str(exc.value) and str(tmp_path) in str(exc.value)
    assert isinstance(exc.value, ExpertsError)


def test_bad_paths_are_one_error_naming_them(tmp_path):
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.csv").write_text("a,b\n")
    cases = {
        tmp_path / "missing.jsonl": "no such file or folder",
        binary: "not UTF-8 text",
        tmp_path / "empty": "holds no .md or .txt files",
        tmp_path / "data.csv": "must be a .jsonl file",
    }
    for path, message in cases.items():
        with pytest.raises(KnowledgeError, match=message) as exc:
            load_passages(path)
        assert str(path) in str(exc.value)


def test_an_unreadable_file_is_named(tmp_path, monkeypatch):
    path = tmp_path / "secret.jsonl"
    path.write_text('{"text": "x"}\n')

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_bytes", refuse)  # root could read a chmod 0 file
    with pytest.raises(KnowledgeError, match="secret.jsonl: cannot be read \\(Permission denied\\)"):
        load_passages(path)


def test_a_passage_too_long_is_truncated_with_a_warning(tmp_path):
    path = jsonl(tmp_path / "long.jsonl", [{"id": "big", "text": "word " * 2000}, {"text": "short"}])
    kb = KnowledgeBase.load(path)
    assert len(kb.passages[0].text) == MAX_PASSAGE_CHARS and kb.passages[1].text == "short"
    assert len(kb.warnings) == 1 and f"{path}:1" in kb.warnings[0] and "truncated" in kb.warnings[0]


# ------------------------------------------------------------ index and search


def test_tokens_keep_numbers_codes_and_symbols():
    assert tokens("Côte d'Ivoire: 1,234.5 and In or As") == [
        "cote", "d", "ivoire", "1234.5", "^In", "^As"]
    assert "^W" in tokens("symbol W?") and "w" in tokens("symbol W?")


def test_search_finds_the_passage_and_the_index_is_cached_by_content(chem, tmp_path):
    cache = tmp_path / "cache"
    kb = KnowledgeBase.load(chem).index(cache)
    assert not kb.cached and len(list(cache.iterdir())) == 1
    for q, want in (("What is the atomic number of tungsten?", "W"), ("Which element has the symbol As?", "As"),
                    ("Which element has atomic number 79?", "Au"), ("What is Fe?", "Fe")):
        assert kb.search(q, 3)[0][0].id == want, q
    assert kb.search("nothing shared here", 3) == [] and kb.search("", 3) == []
    again = KnowledgeBase.load(chem).index(cache)
    assert again.cached and again.search("tungsten", 1)[0][0].id == "W"
    changed = jsonl(tmp_path / "changed.jsonl", ELEMENTS[:3])
    assert not KnowledgeBase.load(changed).index(cache).cached  # other passages: another index
    assert len(list(cache.iterdir())) == 2


def test_a_damaged_cache_is_rebuilt(chem, tmp_path):
    cache = tmp_path / "cache"
    kb = KnowledgeBase.load(chem).index(cache)
    for f in next(cache.iterdir()).iterdir():
        f.write_bytes(b"garbage")
    again = KnowledgeBase.load(chem).index(cache)
    assert not again.cached and again.search("gold", 1)[0][0].id == kb.search("gold", 1)[0][0].id


def test_search_needs_the_index(chem):
    with pytest.raises(KnowledgeError, match="not indexed"):
        KnowledgeBase.load(chem).search("gold")


def test_context_fits_its_budget_and_cuts_the_last_passage(chem):
    kb = KnowledgeBase.load(chem).index()
    text, ids = kb.context("Which element has atomic number 79?", 10_000, k=2)
    assert text.startswith(CONTEXT_HEADER) and ids[0] == "Au" and len(ids) == 2
    assert "[1] Gold: Gold is the element" in text
    for budget in range(len(CONTEXT_HEADER), len(CONTEXT_HEADER) + 400, 7):
        cut, cut_ids = kb.context("Which element has atomic number 79?", budget, k=4)
        assert len(cut) <= budget and (cut_ids[:1] == ("Au",) or cut_ids == ())
    assert kb.context("Which element has atomic number 79?", len(CONTEXT_HEADER) + 50) == ("", ())
    long = KnowledgeBase("long", [Passage("gold", "Gold has atomic number 79. " + "It is a metal. " * 50)]).index()
    cut, cut_ids = long.context("atomic number 79", len(CONTEXT_HEADER) + 200)
    assert len(cut) <= len(CONTEXT_HEADER) + 200 and cut.endswith("…") and cut_ids == ("gold",)
    assert "[1] Gold has atomic number 79. It is a metal." in cut
    assert fit_budget(2048, 2048, "question") == 0
    assert 0 < fit_budget(2048, 64, "question") < 2048 * 4


# ------------------------------------------------------------ the expert


class Recording(ScriptedBackend):
    """A scripted backend that keeps the messages it was given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen = []

    def _plan(self, messages, max_tokens):
        self.seen.append(tuple(messages))
        return super()._plan(messages, max_tokens)


async def knowledge_expert(path, n_ctx=2048, **kwargs) -> Expert:
    backend = Recording({"What is the atomic number of tungsten?": "74."}, n_ctx=n_ctx)
    expert = Expert("chem", backend, domains=("chemistry",), system_prompt="Be brief.",
                    knowledge=KnowledgeBase.load(path).index(), **kwargs)
    await expert.start()
    return expert


async def test_the_expert_puts_the_best_passages_into_its_prompt_and_names_them(chem):
    assert (await knowledge_expert(chem)).knowledge_k == 1  # the default: the best passage only
    expert = await knowledge_expert(chem, knowledge_k=3)
    answer = await expert.answer(b"\1" * 16, question("What is the atomic number of tungsten?"), timeout=10)
    assert (answer.status, answer.text) == ("ok", "74.")
    assert answer.passages[0] == "W" and len(answer.passages) == 3
    system, user = expert.backend.seen[0]
    assert system.role == "system" and system.content.startswith("Be brief.\n\n" + CONTEXT_HEADER)
    assert "[1] Tungsten: Tungsten is the element with symbol W" in system.content
    assert user == ChatMessage("user", "What is the atomic number of tungsten?")
    own = PromptBody((ChatMessage("system", "Judge."), ChatMessage("user", "tungsten?")), 16)
    messages, ids = expert.prepare(own)
    assert messages[0].content.startswith("Judge.\n\n" + CONTEXT_HEADER) and ids == ("W",)
    assert expert.prepare(question("nothing in common")) == (
        (ChatMessage("system", "Be brief."), ChatMessage("user", "nothing in common")), ())


async def test_the_facts_never_overflow_the_context(chem):
    """With a small context the facts shrink, then go: the prompt's estimated
    size (question, facts, answer and template) stays within n_ctx."""
    for n_ctx in (64, 128, 160, 256, 2048):
        expert = await knowledge_expert(chem, n_ctx=n_ctx, knowledge_k=4)
        for max_tokens in (8, 32, 100):
            messages, ids = expert.prepare(question("What is the atomic number of tungsten?", max_tokens))
            size = sum(len(m.content) for m in messages) / 3.0 + max_tokens
            assert not ids or size <= n_ctx, (n_ctx, max_tokens)
            assert bool(ids) == (len(messages[0].content) > len("Be brief."))
            if n_ctx == 64 or n_ctx == 2048:
                assert bool(ids) == (n_ctx == 2048)
    expert = await knowledge_expert(chem, n_ctx=2048)
    big = "tungsten " * 1000
    assert expert.prepare(question(big, 64))[1] == ()  # the question leaves no room


async def test_the_card_announces_the_knowledge_base(chem):
    expert = await knowledge_expert(chem)
    card = expert.card()
    card.validate()
    kb = expert.knowledge
    assert (card.knowledge, card.knowledge_passages, card.knowledge_sha256) == ("chemistry", 4, kb.sha256)
    assert wire.ModelCard.unpack(card.pack()) == card


# ------------------------------------------------------------ the wire


def bare_card(**changes) -> wire.ModelCard:
    import dataclasses

    card = wire.ModelCard("e1", "smollm2-135m", "ab" * 32, "Q4_1", 2048, ("chemistry",), 250.0, 80.5, 0.1, 0, 2,
                          "xllamacpp", 0)
    return dataclasses.replace(card, **changes)


def test_cards_without_knowledge_still_decode_and_copies_are_model_plus_knowledge():
    old = bare_card().to_obj()[:13]  # a card from before the knowledge fields
    card = wire.ModelCard.from_obj(old)
    assert (card.knowledge, card.knowledge_passages, card.knowledge_sha256) == ("", 0, "")
    assert card.voice == "ab" * 32
    chem = bare_card(knowledge="chemistry", knowledge_passages=118, knowledge_sha256="cd" * 32)
    geo = bare_card(knowledge="geography", knowledge_passages=249, knowledge_sha256="ef" * 32)
    assert len({card.voice, chem.voice, geo.voice}) == 3  # one model file, three experts
    assert chem.voice == bare_card(expert_id="e2", knowledge="chem", knowledge_passages=1,
                                   knowledge_sha256="cd" * 32).voice  # a copy
    assert bare_card(sha256="", knowledge="c", knowledge_passages=1, knowledge_sha256="cd" * 32).voice == ""


@pytest.mark.parametrize("changes", [
    {"knowledge": "x" * 65, "knowledge_passages": 1, "knowledge_sha256": "cd" * 32},
    {"knowledge": "chem", "knowledge_passages": -1, "knowledge_sha256": "cd" * 32},
    {"knowledge": "chem", "knowledge_passages": 10**7, "knowledge_sha256": "cd" * 32},
    {"knowledge": "chem", "knowledge_passages": 1, "knowledge_sha256": "CD" * 32},
    {"knowledge": "chem", "knowledge_passages": 1, "knowledge_sha256": "cd" * 31},
    {"knowledge": "chem", "knowledge_passages": 1},
    {"knowledge_passages": 1, "knowledge_sha256": "cd" * 32},
])
def test_bad_knowledge_fields_are_refused(changes):
    with pytest.raises(wire.WireError) as exc:
        wire.ModelCard.from_obj(bare_card(**changes).to_obj())
    assert exc.value.reason == wire.SCHEMA


def test_an_answer_body_carries_the_passage_ids():
    body = wire.AnswerBody("74.", "stop", 0.9, ("element/W", "element/Fe"))
    assert wire.AnswerBody.unpack(body.pack()) == body
    assert wire.AnswerBody.unpack(wire.packb(["74.", "stop", 0.9])).passages == ()
    for bad in ([""], ["x" * 129], ["a"] * 17, "element/W"):
        with pytest.raises(wire.WireError):
            wire.AnswerBody.unpack(wire.packb(["74.", "stop", 0.9, bad]))


# ------------------------------------------------------------ the spec


def test_the_spec_takes_a_knowledge_path(chem, tmp_path):
    spec = parse_expert_spec(f"model=scripted:wrong,domains=chemistry,knowledge={chem},id=chem")
    assert spec.knowledge == chem
    assert parse_expert_spec("model=m").knowledge == ""
    with pytest.raises(ExpertSpecError, match="'knowledge' needs a path"):
        parse_expert_spec("model=m,knowledge=")
    expert = build_expert(spec, tmp_path)  # the index is cached under the data dir
    assert expert.knowledge.name == "chemistry" and len(expert.knowledge) == 4
    assert len(list((tmp_path / "knowledge").iterdir())) == 1
    assert build_expert(spec, tmp_path).knowledge.cached
    with pytest.raises(KnowledgeError, match="missing.jsonl: no such file"):
        build_expert(parse_expert_spec(f"model=scripted:wrong,knowledge={tmp_path / 'missing.jsonl'}"), tmp_path)


def test_a_question_naming_the_subject_gets_the_sentences_that_answer_it():
    from p2pnet.experts.knowledge import focus_sentences

    text = ("Kenya is a country or territory. The ISO 3166-1 alpha-2 code of Kenya is KE. "
            "The ISO 3166-1 alpha-3 code of Kenya is KEN. The ISO 3166-1 numeric code of Kenya is 404.")
    assert focus_sentences(text, "What is the ISO 3166-1 alpha-2 code of Kenya?", "Kenya") == (
        "Kenya is a country or territory. The ISO 3166-1 alpha-2 code of Kenya is KE.")
    # the subject is what is asked for: the whole passage
    assert focus_sentences(text, "Which country has the alpha-3 code KEN?", "Kenya") == text
    # two sentences tie: both stay, in order
    assert focus_sentences(text, "What are the ISO codes of Kenya?", "Kenya") == text
    assert focus_sentences("One. Two.", "one two", "") == "One. Two."  # too short to cut
    assert focus_sentences(text, "Kenya football", "Kenya") == text  # no sentence shares a term but the name
