"""The domain knowledge bases and question banks (testnet/knowledge/, built
by `p2pnet knowledge build` from data packages), the grader, and retrieval
on the held-out questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p2pnet.experts import knowledge_build
from p2pnet.experts.grading import CODE, NAME, NUMBER, KnownAnswer, grade, normalize, numbers
from p2pnet.experts.knowledge import KnowledgeBase, load_passages

KNOWLEDGE = Path(__file__).resolve().parents[1] / "testnet" / "knowledge"
DOMAINS = ("chemistry", "geography", "units")
MIN_TOP3_RECALL = {"chemistry": 0.99, "geography": 0.99, "units": 0.97}
"""Measured on the held-out halves (periodictable 2.1.0, pycountry 26.2.16 +
babel 2.19.0, pint 0.25.3): top-3 recall 1.000, 1.000 and 0.993."""


def questions(domain: str) -> list[dict]:
    return knowledge_build.load_questions(KNOWLEDGE / domain)


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_domain_has_a_knowledge_base_and_a_split_question_bank(domain):
    meta = json.loads((KNOWLEDGE / domain / "meta.json").read_text())
    passages, warnings = load_passages(KNOWLEDGE / domain / "passages.jsonl")
    qs = questions(domain)
    assert warnings == [] and meta["passages"] == len(passages) >= 100
    assert meta["questions"] == len(qs) >= 300 and meta["packages"]  # package -> version
    assert KnowledgeBase("x", passages).sha256 == meta["knowledge_sha256"]
    probe = {q["id"] for q in qs if q["split"] == "probe"}
    heldout = {q["id"] for q in qs if q["split"] == "heldout"}
    assert len(probe) + len(heldout) == len(qs) == len({q["id"] for q in qs})  # disjoint, ids unique
    assert 0.4 < len(probe) / len(qs) < 0.6 and (meta["probe"], meta["heldout"]) == (len(probe), len(heldout))
    assert all(q["split"] == knowledge_build.split_of(q["id"]) for q in qs)  # from the id alone


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_answer_is_in_its_passage_and_grades_as_right(domain):
    passages = {p.id: p for p in load_passages(KNOWLEDGE / domain / "passages.jsonl")[0]}
    for q in questions(domain):
        known = KnownAnswer.from_obj(q)
        text = passages[q["passage"]].text
        if q["type"] == NUMBER:
            assert any(abs(n - float(q["answer"])) <= 1e-9 * abs(n) for n in numbers(text)), q["id"]
        elif q["type"] == CODE:
            assert q["answer"] in text, q["id"]
        else:
            assert normalize(q["answer"]) in normalize(text), q["id"]
        assert grade(q["answer"], known, q["question"]), q["id"]  # the bare answer is right
        assert grade(f"The answer is {q['answer']}.", known, q["question"]), q["id"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_retrieval_finds_the_source_passage_of_held_out_questions(domain):
    kb = KnowledgeBase.load(KNOWLEDGE / domain / "passages.jsonl").index()
    held = [q for q in questions(domain) if q["split"] == "heldout"]
    found = sum(q["passage"] in [p.id for p, _ in kb.search(q["question"], 3)] for q in held)
    assert found / len(held) >= MIN_TOP3_RECALL[domain]


def test_the_build_is_deterministic_and_matches_the_committed_files(tmp_path):
    """Rebuilding from the installed data packages gives the committed files
    byte for byte (when the same package versions are installed)."""
    pytest.importorskip("periodictable")
    metas = knowledge_build.build(tmp_path, ["chemistry"])
    committed = json.loads((KNOWLEDGE / "chemistry" / "meta.json").read_text())
    if metas[0]["packages"] != committed["packages"]:
        pytest.skip(f"other package versions installed: {metas[0]['packages']}")
    for name in ("passages.jsonl", "questions.jsonl", "meta.json"):
        assert (tmp_path / "chemistry" / name).read_bytes() == (KNOWLEDGE / "chemistry" / name).read_bytes()
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        knowledge_build.build(tmp_path, ["poetry"])


# ---------------------------------------------------------------- the grader


@pytest.mark.parametrize("text, right", [
    ("74", True), ("The atomic number of tungsten is 74.", True), ("It is 74 (seventy-four).", True),
    ("74.0", True), ("75", False), ("It is 7 or 74 or 75 or 76.", False), ("I do not know.", False),
])
def test_numbers_exact(text, right):
    assert grade(text, KnownAnswer("74", NUMBER), "What is the atomic number of tungsten?") is right


@pytest.mark.parametrize("text, right", [
    ("1609.344", True), ("1,609.344 metres", True), ("about 1609.3 m", True), ("1.609344e3", True),
    ("1.609 × 10^3 metres", True), ("1609344 mm", False), ("1600", False),
    ("1 609.344 m", False),  # a plain space is no thousands separator: this names 1 and 609.344
])
def test_numbers_with_tolerance_separators_and_units(text, right):
    known = KnownAnswer("1609.344", NUMBER, tolerance=0.001)
    assert grade(text, known, "How many metres are in one mile?") is right


def test_numbers_from_the_question_are_not_the_answer():
    known = KnownAnswer("5", NUMBER)
    assert not grade("Element 5 is boron.", KnownAnswer("79", NUMBER), "Which element has atomic number 5?")
    assert grade("Boron's atomic number is 5.", known, "What is the atomic number of boron?")
    assert numbers("1.38 × 10^-23 J/K, −4, 6.02e23") == pytest.approx([1.38e-23, -4, 6.02e23])


@pytest.mark.parametrize("text, right", [
    ("Côte d'Ivoire", True), ("cote d ivoire", True), ("It is the Ivory Coast.", True),
    ("COTE D'IVOIRE.", True), ("Ivory", False), ("Ghana", False),
    ("Ivory Coast " + "and more words " * 20, False),  # too long to be an answer
])
def test_names_case_accents_articles_and_aliases(text, right):
    assert grade(text, KnownAnswer("Côte d'Ivoire", NAME, ("Ivory Coast",))) is right


def test_names_match_whole_words_only():
    assert grade("The element is aluminium.", KnownAnswer("Aluminum", NAME, ("Aluminium",)))
    assert not grade("Iron.", KnownAnswer("Ir", NAME))
    assert grade("Trinidad & Tobago", KnownAnswer("Trinidad and Tobago", NAME))


@pytest.mark.parametrize("text, right", [
    ("Fe", True), ("fe", True), ("The symbol of iron is Fe.", True), ("FE is the symbol", False),
    ("F", False), ("Feather", False),
])
def test_codes_keep_their_case_inside_sentences(text, right):
    assert grade(text, KnownAnswer("Fe", CODE)) is right


def test_a_known_number_must_be_a_number():
    with pytest.raises(ValueError):
        KnownAnswer("seventy-four", NUMBER)
    with pytest.raises(ValueError):
        KnownAnswer("x", "guess")


def test_knowledge_check_names_a_bad_line(tmp_path):
    """`p2pnet knowledge check` reports a malformed file in one line naming file and line."""
    from .test_cli_bad_input import one_line, p2pnet

    bad = tmp_path / "kb.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": \n', encoding="utf-8")
    proc = p2pnet("knowledge", "check", str(bad), home=tmp_path)
    assert proc.returncode == 1 and one_line(proc) == f"p2pnet: error: knowledge file {bad}:2: not JSON " \
                                                      "(Expecting value)"
    ok = p2pnet("knowledge", "check", str(KNOWLEDGE / "units" / "passages.jsonl"), "--json", home=tmp_path)
    assert ok.returncode == 0 and json.loads(ok.stdout)["passages"] == 208
