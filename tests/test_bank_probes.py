"""Validators' probes from the probe halves of the shipped question banks,
graded exactly by p2pnet.experts.grading, sent as ordinary user queries."""

import random
from collections import Counter

from p2pnet.experts import knowledge_build, signals
from p2pnet.query import ChatRequest


def test_bank_probes_are_the_probe_halves_only():
    banks = knowledge_build.shipped_banks()
    assert [b.name for b in banks] == ["chemistry", "geography", "units"]
    probes = signals.ProbeSet.from_banks(banks).probes
    held_out = {q["question"] for b in banks for q in knowledge_build.load_questions(b, "heldout")}
    expected = sum(len(knowledge_build.load_questions(b, "probe")) for b in banks)
    assert len(probes) == expected and not held_out & {p.question for p in probes}
    assert {p.domain for p in probes} == {"chemistry", "geography", "units"}
    assert all(p.known is not None for p in probes)


def test_a_bank_probe_is_graded_by_its_known_answer():
    probes = {p.question: p for p in signals.ProbeSet.from_banks(knowledge_build.shipped_banks()).probes}
    mass = next(p for q, p in probes.items() if q.startswith("What is the atomic mass of"))
    value = float(mass.answer)
    assert mass.grade(f"It is about {value * 1.001:.4f} u.") == 1.0  # within the bank's 0.2%
    assert mass.grade(f"It is {value * 1.1:.4f} u.") == 0.0
    code = next(p for p in probes.values() if p.known.kind == "code")
    assert code.grade(f"The code is {code.answer}.") == 1.0
    assert code.grade(f"The code is {code.answer.lower()}x.") == 0.0
    currency = next(p for q, p in probes.items() if q.startswith("What is the currency of") and p.known.aliases)
    assert currency.grade(f"It is the {currency.known.aliases[0]}.") == 1.0  # an alias counts


def test_the_default_set_draws_every_domain_and_generated_sums():
    probes = signals.ProbeSet.default()
    rng = random.Random(5)
    drawn = [probes.draw(rng) for _ in range(400)]
    per_domain = Counter(p.domain for p in drawn)
    assert set(per_domain) == {"general", "geography", "chemistry", "units"}
    assert min(per_domain.values()) > 400 / 4 / 2  # uniform over domains, not over questions
    assert any(p.known is None and "+" in p.question for p in drawn)


async def test_a_bank_probe_goes_out_as_a_user_query():
    class FakeCoordinator:
        def __init__(self):
            self.calls = []

        async def chat(self, req, on_delta=None, *, probe=None):
            self.calls.append((req, probe))
            return "answered"

    co = FakeCoordinator()
    prober = signals.Prober(co, rng=random.Random(1))
    bank = next(p for p in prober.probes.probes if p.known is not None)
    assert await prober.probe_once(bank) == "answered"
    req, probe = co.calls[0]
    assert req == ChatRequest("p2pnet", (("user", bank.question),), domain=bank.domain)
    assert probe is bank
