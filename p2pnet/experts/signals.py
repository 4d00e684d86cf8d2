"""Evaluation signals beyond agreement: probe questions with known answers,
peer judging with the authors hidden, and user feedback.

The pure parts (grading, judge prompts and their parsing, vote weighting, the
feedback book) are functions and small objects; :class:`Prober` is the one
service, driven by the validator node's nursery. See docs/evaluation.md."""

from __future__ import annotations

import logging
import random
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Mapping, Optional, Sequence

import trio

from p2pnet.experts import grading
from p2pnet.experts.evaluation import (
    AGREEMENT, FAILURE, JUDGE, PROBE, Candidate, Evaluation, SignalWeights, combine, contains_phrase,
    is_usable,
)
from p2pnet.experts.grading import KnownAnswer
from p2pnet.query import ChatRequest, FeedbackRepeated, QueryError, UnknownQuery

log = logging.getLogger("p2pnet.experts.signals")


# ------------------------------------------------------------------ probes

@dataclass(frozen=True)
class Probe:
    question: str
    answer: str  # the exact expected answer, found in a right answer as whole words
    domain: str = "general"
    known: Optional[KnownAnswer] = None  # a question bank's answer, graded by p2pnet.experts.grading

    def grade(self, text: str) -> float:
        """1.0 if the answer is right, else 0.0: graded as its bank says
        (numbers, names and their variants, codes) when it has ``known``,
        else if the normalized answer contains the expected answer."""
        if self.known is not None:
            return 1.0 if grading.grade(text, self.known, self.question) else 0.0
        return 1.0 if contains_phrase(text, self.answer) else 0.0


_CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("England", "London"),
    ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
)


class ProbeSet:
    """Closed-form questions with exact answers. ``builtin()`` holds capitals
    and arithmetic; ``draw`` adds freshly generated sums so the set is not a
    finite list an expert could learn to recognise."""

    def __init__(self, probes: Sequence[Probe], *, arithmetic: bool = False) -> None:
        if not probes and not arithmetic:
            raise ValueError("a ProbeSet needs probes or generated arithmetic")
        self.probes = tuple(probes)
        self.arithmetic = arithmetic

    @classmethod
    def builtin(cls) -> "ProbeSet":
        probes = [Probe(f"What is the capital of {country}?", city, "geography") for country, city in _CAPITALS]
        probes += [Probe("What is 2+2?", "4", "general"), Probe("What is 3 times 3?", "9", "general")]
        return cls(probes, arithmetic=True)

    @classmethod
    def from_banks(cls, folders: Sequence, *, split: str = "probe", arithmetic: bool = False) -> "ProbeSet":
        """The ``split`` half ("probe"; the other is held out for evaluation)
        of the question banks in ``folders`` (p2pnet.experts.knowledge_build),
        graded by each question's known answer."""
        from p2pnet.experts.knowledge_build import load_questions

        probes = [Probe(q["question"], q["answer"], q["domain"], KnownAnswer.from_obj(q))
                  for folder in folders for q in load_questions(folder, split)]
        return cls(probes, arithmetic=arithmetic)

    @classmethod
    def default(cls) -> "ProbeSet":
        """The built-in probes and the probe halves of the shipped question
        banks (chemistry, geography, units), when they are installed."""
        from p2pnet.experts.knowledge_build import shipped_banks

        try:
            banks = cls.from_banks(shipped_banks()).probes
        except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged bank: the built-in set still works
            log.warning("question banks not used for probes: %s", exc)
            banks = ()
        return cls(cls.builtin().probes + tuple(banks), arithmetic=True)

    def domains(self) -> list[str]:
        """The domains this set has probes for, sorted."""
        return sorted({p.domain for p in self.probes} | ({"general"} if self.arithmetic else set()))

    def draw(self, rng: random.Random, served: Optional[Collection[str]] = None) -> Probe:
        """A probe of a domain drawn uniformly (so a large bank does not
        crowd out the others), then a question of it; generated sums are
        half of the "general" domain's draws (all of them without probes).

        ``served`` (the domains the announced experts name, see
        :func:`servable`) limits the draw to domains some expert would
        answer; a probe of a domain nobody serves fails at once and measures
        nothing. None, or no overlap, leaves every domain in."""
        domains = servable(self.domains(), served)
        domain = domains[rng.randrange(len(domains))]
        pool = [p for p in self.probes if p.domain == domain]
        if self.arithmetic and domain == "general" and (not pool or rng.random() < 0.5):
            a, b = rng.randint(2, 20), rng.randint(2, 20)
            return Probe(f"What is {a} + {b}?", str(a + b), "general")
        return pool[rng.randrange(len(pool))]

    def __len__(self) -> int:
        return len(self.probes)


def servable(domains: Sequence[str], served: Optional[Collection[str]]) -> list[str]:
    """Those of ``domains`` that an expert announcing one of ``served`` would
    answer (as the directory routes: a "general" expert serves any domain, so
    with one announced every domain stays). All of ``domains`` when
    ``served`` is None or leaves none."""
    if served is None or "general" in served:
        return list(domains)
    return [d for d in domains if d in served] or list(domains)


def announced_domains(coordinator) -> Optional[frozenset]:
    """The domains the experts in ``coordinator``'s directory announce now;
    None if it keeps no directory (then probes draw from every domain)."""
    directory, clock = getattr(coordinator, "directory", None), getattr(coordinator, "clock", None)
    if directory is None or clock is None:
        return None
    return frozenset(d for ref in directory.all(clock()) for d in ref.card.domains)


class Prober:
    """Sends a probe through the coordinator every ``interval_s`` (randomly
    jittered by ±50%), exactly as a user query, and rates each respondent
    1.0/0.0 (signal "probe"). Probes draw only domains that some announced
    expert serves (``served``: a callable returning those domains, by default
    read from the coordinator's directory). Run it with
    ``nursery.start(prober.run)``."""

    def __init__(self, coordinator, probes: Optional[ProbeSet] = None, *, interval_s: float = 300.0,
                 respondents: Optional[int] = None, rng: Optional[random.Random] = None,
                 served: Optional[Callable[[], Optional[Iterable[str]]]] = None) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.coordinator = coordinator
        self.probes = probes or ProbeSet.default()
        self.interval_s = interval_s
        self.respondents = respondents
        self.rng = rng or random.Random()
        self.served = served or (lambda: announced_domains(coordinator))
        self.sent = 0
        self.failed = 0

    async def probe_once(self, probe: Optional[Probe] = None):
        """Send one probe; returns the ChatResult, or None if the query failed."""
        if probe is None:
            served = self.served()
            probe = self.probes.draw(self.rng, None if served is None else frozenset(served))
        req = ChatRequest(model="p2pnet", messages=(("user", probe.question),), domain=probe.domain,
                          respondents=self.respondents)
        self.sent += 1
        try:
            return await self.coordinator.chat(req, probe=probe)
        except QueryError as exc:
            self.failed += 1
            log.info("probe %r got no answer: %s", probe.question, exc)
            return None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.interval_s * (0.5 + self.rng.random()))
            await self.probe_once()

    def status(self) -> dict:
        return {"probes_sent": self.sent, "probes_failed": self.failed}


# ----------------------------------------------------------------- judging

LABELS = "ABCDEFGHIJKLMNOP"
JUDGE_SYSTEM = ("You are a strict, impartial judge. You compare answers to a question and "
                "reply with the letter of the best answer only.")


def judge_prompt(question: str, answers: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Chat messages asking a judge to pick the best of ``answers`` (labelled
    A, B, ... in the order given; the caller shuffles and hides the authors)."""
    if not 2 <= len(answers) <= len(LABELS):
        raise ValueError(f"a judge compares 2 to {len(LABELS)} answers")
    listing = "\n\n".join(f"Answer {LABELS[i]}:\n{a.strip()}" for i, a in enumerate(answers))
    letters = ", ".join(LABELS[:len(answers)])
    user = (f"Question:\n{question.strip()}\n\n{listing}\n\n"
            f"Which answer is the most correct and helpful? Reply with one letter ({letters}).")
    return (("system", JUDGE_SYSTEM), ("user", user))


_FILLERS = r"(?:\W+(?i:answer|option|choice|one|is|would|be|clearly|definitely))*"
_STRONG = re.compile(r"(?i:best|winner|pick|choose|select|prefer|verdict)" + _FILLERS + r"\W+([A-P])\b")
_WEAK = re.compile(r"(?i:answer|option|choice)\W{0,3}([A-P])\b")
_ALONE = re.compile(r"([A-P])(?:[.):]|\s*$)")


def parse_pick(text: str, n: int) -> Optional[int]:
    """The index a judge picked among ``n`` answers, or None if unclear.

    Accepts "B", "B.", "**B**", "(B)", "Answer B", "The best answer is B
    because...", "Answer A is wrong; the best is B". A reply naming several
    letters without saying which is best is unclear."""
    labels = LABELS[:n]
    stripped = text.strip().strip("*\"'`([ ")
    alone = _ALONE.match(stripped)
    if alone and alone.group(1) in labels:
        return labels.index(alone.group(1))
    for pattern in (_STRONG, _WEAK):
        picks = [m.group(1) for m in pattern.finditer(text) if m.group(1) in labels]
        if len(set(picks)) == 1:
            return labels.index(picks[0])
        if picks:
            break  # several letters named the same way: unclear
    found = {m for m in re.findall(r"\b([A-P])\b", text) if m in labels}
    if len(found) == 1:
        return labels.index(found.pop())
    return None


def judge_weight(mean: float, evidence: float) -> float:
    """A judge's vote weight from its standing: its posterior mean quality,
    shrunk towards a small floor while it has little evidence."""
    trust = evidence / (evidence + 5.0)
    return round(0.1 + 0.9 * (trust * mean + (1.0 - trust) * 0.5), 4)


def tally(picks: Sequence[tuple[Optional[int], float]], answers: Sequence[int]) -> Optional[dict[int, float]]:
    """Per answer (keys: ``answers``), the weighted share of the judges' votes
    it got. ``picks`` holds (picked answer or None, judge weight). None if no
    judge gave a valid vote."""
    scores = {i: 0.0 for i in answers}
    total = 0.0
    for pick, weight in picks:
        if pick is None or pick not in scores or weight <= 0:
            continue
        scores[pick] += weight
        total += weight
    if total <= 0:
        return None
    return {i: round(s / total, 4) for i, s in scores.items()}


# ---------------------------------------------------------------- feedback

@dataclass(frozen=True)
class FeedbackTarget:
    """What a user's verdict on a query's answer rates."""

    respondent: bytes
    expert_id: str
    answer_hash: bytes
    domain: str
    query_hash: bytes


class FeedbackBook:
    """Recent answered queries that may still get feedback, bounded: the
    oldest are forgotten first. Each query takes one verdict."""

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._targets: OrderedDict[str, tuple[FeedbackTarget, bool]] = OrderedDict()

    def remember(self, query_id: str, target: FeedbackTarget) -> None:
        self._targets[query_id] = (target, False)
        self._targets.move_to_end(query_id)
        while len(self._targets) > self.capacity:
            self._targets.popitem(last=False)

    def take(self, query_id: str) -> FeedbackTarget:
        """The target of ``query_id``, marked as rated. UnknownQuery if it was
        never answered here or has been forgotten; FeedbackRepeated the second time."""
        entry = self._targets.get(query_id)
        if entry is None:
            raise UnknownQuery(f"no recent query {query_id!r} on this node (unknown or expired)")
        target, used = entry
        if used:
            raise FeedbackRepeated(f"feedback for query {query_id} was already recorded")
        self._targets[query_id] = (target, True)
        return target

    def __len__(self) -> int:
        return len(self._targets)

# ------------------------------------------------------------- combining

def apply_signals(cands: Sequence[Candidate], evaluation: Evaluation, weights: SignalWeights, *,
                  probe: Optional[Probe] = None, judge_scores: Optional[Mapping[int, float]] = None):
    """Mix the signals of each answer into its rating; returns
    ``(evaluation, rated, per_signal)``: the evaluation with combined scores
    (and the choice they imply), per candidate ``(score, signal)`` or None (no
    rating), and per candidate the signal values that went in.

    Usable answers get "agreement" from ``evaluation`` (or the ``probe``
    grade instead) and "judge" from ``judge_scores``; failed ones keep the
    evaluator's 0.0 as signal "failure"."""
    usable = [i for i, c in enumerate(cands) if is_usable(c)]
    per_signal: list[dict] = [{} for _ in cands]
    for i in usable:
        if probe is not None:
            per_signal[i][PROBE] = probe.grade(cands[i].text)
        elif evaluation.scores[i] is not None:
            per_signal[i][AGREEMENT] = evaluation.scores[i]
        if judge_scores and i in judge_scores:
            per_signal[i][JUDGE] = judge_scores[i]
    rated: list = []
    for i, c in enumerate(cands):
        mixed = combine(per_signal[i], weights) if per_signal[i] else None
        if mixed is None and i not in usable and evaluation.scores[i] is not None:
            mixed = (float(evaluation.scores[i]), FAILURE)
        rated.append(mixed)
    chosen, reason = evaluation.chosen, evaluation.reason
    if usable and (probe is not None or judge_scores):
        def rank(i):
            return (rated[i][0] if rated[i] else -1.0, i == evaluation.chosen, -cands[i].latency_ms)

        chosen = max(usable, key=rank)
        if rated[chosen]:
            reason = f"highest combined score ({rated[chosen][0]:.2f}, {rated[chosen][1]}), then {reason}"
    scores = tuple(r[0] if r else None for r in rated)
    return Evaluation(chosen, scores, reason), rated, per_signal


# ---------------------------------------------------------------- settings

DEFAULT_PROBE_INTERVAL_S = 300.0


@dataclass(frozen=True)
class SignalSettings:
    weights: SignalWeights = SignalWeights()
    judges: int = 0  # judges per query unless the request says
    probe_interval_s: float = 0.0  # 0: this node sends no probes


def signal_settings(config) -> SignalSettings:
    """The node's signal settings. Optional config keys (read if the config
    has them): ``signal_weights`` (mapping), ``judges``, ``probe_interval_s``;
    a validator probes every DEFAULT_PROBE_INTERVAL_S unless told otherwise."""
    weights = getattr(config, "signal_weights", None) or {}
    interval = getattr(config, "probe_interval_s", None)
    if interval is None or interval < 0:
        interval = DEFAULT_PROBE_INTERVAL_S if getattr(config, "validator", False) else 0.0
    return SignalSettings(SignalWeights.from_mapping(dict(weights)), int(getattr(config, "judges", 0) or 0),
                          float(interval))
