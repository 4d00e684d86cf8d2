"""Routing by what is asked: term summaries on model cards, the pure domain
inference (p2pnet.experts.domains), and a question without a domain reaching
the knowledge expert that can answer it across real nodes."""

import random
import string
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from p2pnet import config, wire
from p2pnet.experts import domains, scripted
from p2pnet.experts.expert import Expert
from p2pnet.experts.knowledge import KnowledgeBase
from p2pnet.experts.knowledge_build import load_questions
from p2pnet.node import Node
from p2pnet.query import Provenance

from .conftest_net import wait_for
from .test_coordinator import ask, boot_addr, coordinator_of, start_node

KNOWLEDGE = Path(__file__).resolve().parents[1] / "testnet" / "knowledge"
DOMAINS = ("chemistry", "geography", "units")


@pytest.fixture(scope="module")
def bases():
    return {d: KnowledgeBase.load(KNOWLEDGE / d / "passages.jsonl") for d in DOMAINS}


@pytest.fixture(scope="module")
def cards(bases):
    out = [SimpleNamespace(domains=(d,), **{k: v for k, v in kb.card_fields().items() if k.startswith("terms")})
           for d, kb in bases.items()]
    return out + [SimpleNamespace(domains=("general",), terms=b"", terms_hashes=0)]  # a bare generalist


def test_a_summary_holds_its_terms_and_few_others():
    terms = [f"term{i}x" for i in range(500)]
    summary = domains.TermSummary.build(terms)
    assert all(t in summary for t in terms)
    rng = random.Random(7)
    others = ["".join(rng.choices(string.ascii_lowercase, k=9)) for _ in range(5000)]
    false_hits = sum(1 for t in others if t in summary)
    assert false_hits / len(others) < 0.03  # built for 1%
    assert domains.TermSummary.build(terms) == summary  # deterministic: sha256 positions


def test_a_summary_never_outgrows_its_bound():
    summary = domains.TermSummary.build((f"w{i}" for i in range(100_000)), max_bytes=512)
    assert len(summary.bits) <= 512 and "w0" in summary  # the first terms are kept
    with pytest.raises(domains.SummaryError):
        domains.TermSummary(b"", 3)
    with pytest.raises(domains.SummaryError):
        domains.TermSummary(b"\0" * (domains.MAX_SUMMARY_BYTES + 1), 3)


def test_shipped_summaries_are_small(bases):
    for name, kb in bases.items():
        fields = kb.card_fields()
        assert 0 < len(fields["terms"]) <= 4096, name
        assert kb.summary.fill < 0.6, name  # not saturated: it tells terms apart


def test_routing_terms_drop_numbers_stop_words_and_sentence_capitals():
    assert domains.routing_terms("Can you tell me the atomic number of tungsten?") == ["atomic", "number", "tungsten"]
    # codes and symbols in capitals stay; "The"/"How"/"Can" at a sentence's start do not
    assert "^DEU" in domains.routing_terms("Which country has the alpha-3 code DEU?")
    assert "^Fe" in domains.routing_terms("Which element has the symbol Fe?")
    assert not [t for t in domains.routing_terms("How is it? The end. Can it?") if t.startswith("^")]
    assert domains.routing_terms("What is 2 + 2?") == []


def test_inferred_route_on_held_out_questions(cards):
    """A fixed sample (every 4th held-out question of each bank) goes to its
    own domain; docs/knowledge.md has the full table (bench/experts.py --routing)."""
    for name in DOMAINS:
        sample = load_questions(KNOWLEDGE / name, "heldout")[::4]
        right = sum(1 for q in sample if domains.infer(q["question"], cards).domain == name)
        assert right / len(sample) >= 0.95, (name, right, len(sample))


def test_questions_no_domain_knows_go_to_the_generalists(cards):
    for q in ("Who wrote Hamlet?", "Write a haiku about autumn.", "What is 2+2?", "How do I bake bread?"):
        route = domains.infer(q, cards)
        assert route.domain == "general" and route.inferred, (q, route)
    route = domains.infer("What is the atomic number of tungsten?", cards)
    assert route.domain == "chemistry" and route.score == pytest.approx(1.0)
    assert [d for d, _ in route.scores][0] == "chemistry"


def test_ties_and_no_summaries_fall_back(cards):
    twin = cards[0]  # chemistry's summary, announced for a second domain too
    both = [twin, SimpleNamespace(domains=("alchemy",), terms=twin.terms, terms_hashes=twin.terms_hashes)]
    assert domains.infer("What is the atomic number of tungsten?", both).domain == "general"
    assert domains.infer("What is the atomic number of tungsten?", []).domain == "general"
    bad = SimpleNamespace(domains=("x",), terms=b"\1", terms_hashes=99)  # unreadable: ignored, not a crash
    assert domains.infer("tungsten", [bad]).domain == "general"
    # a saturated filter "knows" every question: ignored, so it cannot pull queries to its domain
    greedy = SimpleNamespace(domains=("everything",), terms=b"\xff" * 4096, terms_hashes=7)
    assert domains.infer("What is the atomic number of tungsten?", [*cards, greedy]).domain == "chemistry"
    assert domains.infer("Who wrote Hamlet?", [*cards, greedy]).domain == "general"


def test_a_named_domain_is_kept():
    route = domains.resolve("Chemistry", "Who wrote Hamlet?", [])
    assert (route.domain, route.inferred) == ("chemistry", False)
    assert domains.last_user_text((("system", "s"), ("user", "a"), ("assistant", "b"), ("user", "q"))) == "q"


def _card(**kw):
    base = dict(expert_id="e", model="m", sha256="", quantization="q", n_ctx=2048, domains=("chemistry",),
                prompt_tps=1.0, gen_tps=1.0, price_per_1k=0.0, load=0, max_concurrency=1)
    return wire.ModelCard(**{**base, **kw})


def test_card_term_summary_on_the_wire(bases):
    fields = bases["chemistry"].card_fields()
    card = _card(**fields)
    back = wire.ModelCard.unpack(card.pack())
    assert back == card and back.terms == fields["terms"]
    assert len(card.pack()) - len(_card(**{k: v for k, v in fields.items() if not k.startswith("terms")}).pack()) \
        < len(fields["terms"]) + 8  # the summary costs its own bytes and a few
    old = _card().to_obj()[:-2]  # an older node's card: no summary fields
    assert wire.ModelCard.from_obj(old).terms == b""
    for bad in ({"terms": b"\1" * 4097, "terms_hashes": 3}, {"terms": b"\1", "terms_hashes": 0},
                {"terms": b"", "terms_hashes": 3}, {"terms": b"\1", "terms_hashes": 17}):
        with pytest.raises(wire.WireError):
            wire.ModelCard.from_obj(_card(**bad).to_obj())


def test_provenance_routing_reads_back():
    prov = Provenance(domain="chemistry", routing={"domain": "chemistry", "inferred": True})
    assert Provenance.from_json(prov.to_json()).routing == {"domain": "chemistry", "inferred": True}
    assert Provenance.from_json({"domain": "x", "routing": "junk"}).routing is None


TUNGSTEN = "What is the atomic number of tungsten?"


async def test_a_question_without_a_domain_reaches_the_knowledge_expert(nursery, tmp_path):
    """Real nodes over loopback: a chemistry knowledge expert (scripted model)
    and a bare generalist; the question names no domain."""
    chem_kb = KnowledgeBase.load(KNOWLEDGE / "chemistry" / "passages.jsonl").index(tmp_path / "cache")
    coord = await start_node(nursery, tmp_path, "coord")
    nodes = [coord]
    for name, domains_, kb, text in (("chem", ("chemistry",), chem_kb, "Tungsten has atomic number 74."),
                                     ("gen", ("general",), None, "I do not know.")):
        backend = scripted.ScriptedBackend({TUNGSTEN: text, "Who wrote Hamlet?": f"{name}: Shakespeare."})
        expert = Expert(name, backend, domains=domains_, knowledge=kb)
        await expert.start()
        cfg = config.build(None, data_dir=tmp_path / name, listen=("/ip4/127.0.0.1/tcp/0",), api_port=0,
                           bootstrap=(boot_addr(coord),), announce_interval_s=0.5)
        node = Node(cfg, experts=[expert])
        await nursery.start(node.run)
        nodes.append(node)
    await wait_for(lambda: all(len(x.network.peers()) == 2 for x in nodes), 30, "mesh")
    coordinator = coordinator_of(coord)
    await wait_for(lambda: len(coordinator.directory.all(coordinator.clock())) == 2, 30, "announcements")

    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, TUNGSTEN))
    prov = resp.model_extra["p2pnet"]
    assert resp.choices[0].message.content == "Tungsten has atomic number 74."
    assert prov["domain"] == "chemistry" and prov["chosen"]["expert_id"] == "chem"
    assert prov["routing"]["inferred"] is True and prov["routing"]["domain"] == "chemistry"
    assert prov["respondents"][0]["passages"][0] == "element/W"  # it answered with its knowledge

    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, "Who wrote Hamlet?"))
    prov = resp.model_extra["p2pnet"]
    assert prov["domain"] == "general" and prov["chosen"]["expert_id"] == "gen"

    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, "Who wrote Hamlet?", domain="chemistry"))
    prov = resp.model_extra["p2pnet"]  # a named domain is not second-guessed
    assert prov["domain"] == "chemistry" and "routing" not in prov and prov["chosen"]["expert_id"] == "chem"
