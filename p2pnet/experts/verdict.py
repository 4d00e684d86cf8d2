"""The end of a query round: which answer is delivered, what each respondent
is rated, the provenance, or the error the query fails with. Pure: a
function of the round's answers (see ``query_round.QueryRound``)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Optional, Sequence

from p2pnet import wire
from p2pnet.experts import signals
from p2pnet.experts.evaluation import Candidate, is_usable, vote_weight, weighted_choice
from p2pnet.experts.selection import Standing
from p2pnet.query import (
    BadQuery, ChatResult, DeadlineExceeded, ExpertKey, JudgeReport, NoExpertAvailable, Provenance,
    QueryError, RespondentReport, SelectionReport,
)


@dataclass(frozen=True)
class Outcome:
    """How a round ended: ``result`` or ``error``. ``feedback``: what a
    user's verdict on the delivered answer would rate (None for a probe or a
    failure). ``stream_mismatch``: text already streamed differs from the
    answer delivered."""

    result: Optional[ChatResult] = None
    error: Optional[QueryError] = None
    feedback: Optional[signals.FeedbackTarget] = None
    stream_mismatch: bool = False


@dataclass(frozen=True)
class Judging:
    scores: Optional[dict]  # answer index -> share of the judges' weight; None: no vote
    judges: tuple[JudgeReport, ...]


def judge_tally(refs: Sequence, answers: dict, order: Sequence[int], cands: Sequence[Candidate],
                domain: str, standing: Standing) -> Judging:
    """Each judge's pick (by its position in the shuffled ``order``), weighed
    by the judge's standing in ``domain``."""
    picks, report = [], []
    for ref in refs:
        answer = answers[ref.key]
        pick = signals.parse_pick(answer.text, len(order)) if answer.status == "ok" else None
        weight = signals.judge_weight(*standing(ref.peer, domain)[:2])
        picks.append((None if pick is None else order[pick], weight))
        picked = None if pick is None else cands[order[pick]]
        report.append(JudgeReport(ref.peer_str, ref.card.expert_id, answer.status, weight,
                                  None if picked is None else ExpertKey(picked.peer, picked.expert_id)))
    usable = [i for i, c in enumerate(cands) if is_usable(c)]
    return Judging(signals.tally(picks, usable) if refs else None, tuple(report))


class Verdict:
    """The verdict on ``rnd`` (a finished QueryRound): read once."""

    def __init__(self, rnd, judging: Optional[Judging]) -> None:
        s = rnd.s
        self.rnd = rnd
        self.keys = list(rnd.asked)
        self.cands = [rnd.answers[k] for k in self.keys]
        evaluation = rnd.evaluate()
        evaluation, self.rated, self.per_signal = signals.apply_signals(
            self.cands, evaluation, rnd.rules.weights, probe=s.probe,
            judge_scores=judging.scores if judging is not None else None)
        # with peer judging asked for, the judges (or their absence) decide; a probe's grade decides
        if s.probe is None and judging is None:
            evaluation = self._by_standing(evaluation)
        self.evaluation, self.judging = evaluation, judging
        self.query_hash = hashlib.sha256(rnd.query_id + rnd.prompt.pack()).digest()
        self.ratings = self._ratings()

    def _by_standing(self, evaluation):
        """Agreement counted by standing: each usable answer votes with its
        expert's weight in the domain (:func:`evaluation.vote_weight` of its
        posterior mean; copies of one model once), the heaviest group of
        agreeing answers wins and its best-standing expert's answer is
        delivered, so an answer that disagrees with a better-standing expert
        is not chosen for being fast or for agreeing with weaker ones. While
        standing says nothing (every weight equal) the evaluator's head count
        stands. Only the delivered answer changes; the ratings stay those of
        the head count, so standing never rates itself."""
        usable = [i for i, c in enumerate(self.cands) if is_usable(c)]
        if len(usable) < 2:
            return evaluation
        rnd, domain = self.rnd, self.rnd.s.domain
        weights = [vote_weight(rnd.s.standing(k[0], domain)[0]) for k in self.keys]
        if len({round(weights[i], 9) for i in usable}) == 1:
            return evaluation
        pick, reason = weighted_choice(self.cands, weights, rnd.voices())
        if pick == evaluation.chosen:
            return dataclasses.replace(evaluation, reason=f"{evaluation.reason}; {reason}")
        return dataclasses.replace(evaluation, chosen=pick, reason=f"{reason} (head count: {evaluation.reason})")

    def _ratings(self) -> list:
        """One rating per rated respondent; none for this node's own experts."""
        out = []
        meta, domain = self.rnd.meta, self.rnd.s.domain[:64]
        for key, cand, scored in zip(self.keys, self.cands, self.rated):
            if scored is None or key[0] == self.rnd.s.me:
                continue
            out.append(wire.Rating(
                query_hash=self.query_hash, respondent=key[0], expert_id=cand.expert_id, domain=domain,
                answer_hash=meta[key].answer_hash if cand.status == "ok" else b"",
                score=float(scored[0]), signal=scored[1]))
        return out

    def provenance(self) -> Provenance:
        rnd, ev = self.rnd, self.evaluation
        sel = rnd.selection
        respondents = tuple(
            RespondentReport(c.peer, c.expert_id, c.status, c.latency_ms, c.completion_tokens,
                             rnd.meta[k].prompt_tokens, rnd.meta[k].gen_ms, ev.scores[i], rnd.meta[k].error,
                             c.confidence, self.rated[i][1] if self.rated[i] else None, self.per_signal[i],
                             tuple(rnd.meta[k].passages))
            for i, (k, c) in enumerate(zip(self.keys, self.cands)))
        chosen = None if ev.chosen is None else ExpertKey(self.cands[ev.chosen].peer, self.cands[ev.chosen].expert_id)
        return Provenance(
            domain=rnd.s.domain,
            selection=SelectionReport(rnd.s.policy.name, sel.reason, tuple(tuple(x) for x in sel.scores[:16])),
            respondents=respondents, chosen=chosen, reason=ev.reason,
            tiebreakers=tuple(ExpertKey(r.peer_str, r.card.expert_id) for r in rnd.tiebreakers),
            escalated=rnd.escalated, escalation_declined=rnd.declined,
            judges=None if self.judging is None else self.judging.judges)

    def outcome(self) -> Outcome:
        rnd, ev, cands = self.rnd, self.evaluation, self.cands
        if ev.chosen is None:
            statuses = sorted({c.status for c in cands})
            refusals = [rnd.meta[k].error for k, c in zip(self.keys, cands) if c.status == "rejected"]
            if refusals and not rnd.timed_out:  # the prompt is at fault: asking again will not help
                error: QueryError = BadQuery(f"{len(refusals)} of {len(cands)} experts cannot answer this prompt: "
                                             f"{refusals[0] or 'no reason given'}")
            elif rnd.timed_out or "timeout" in statuses or "slow" in statuses:
                error = DeadlineExceeded(f"no answer before the deadline (respondents: {', '.join(statuses)})")
            else:
                error = NoExpertAvailable(f"no usable answer (respondents: {', '.join(statuses)})")
            return Outcome(error=error)
        key, best = self.keys[ev.chosen], cands[ev.chosen]
        feedback = None if rnd.s.probe is not None else signals.FeedbackTarget(
            respondent=key[0], expert_id=key[1], answer_hash=rnd.meta[key].answer_hash,
            domain=rnd.s.domain[:64], query_hash=self.query_hash)
        result = ChatResult(
            text=best.text, finish_reason="length" if best.finish_reason == "length" else "stop",
            prompt_tokens=rnd.meta[key].prompt_tokens, completion_tokens=best.completion_tokens,
            query_id=rnd.query_id.hex(), provenance=self.provenance())
        mismatch = bool(rnd.s.streaming and rnd.streamed and not self._streamed_here())
        return Outcome(result=result, feedback=feedback, stream_mismatch=mismatch)

    def _streamed_here(self) -> bool:
        ev = self.evaluation
        return (ev.chosen is not None and self.rnd.stream_key == self.keys[ev.chosen]
                and self.cands[ev.chosen].text.startswith(self.rnd.streamed))

    def rest_to_stream(self) -> list:
        """The pieces of the delivered answer the client has not seen yet
        (all of it when what streamed came from another respondent)."""
        ev, rnd = self.evaluation, self.rnd
        if not rnd.s.streaming or ev.chosen is None:
            return []
        text = self.cands[ev.chosen].text
        return list(pieces(text[len(rnd.streamed):] if self._streamed_here() else text))


def pieces(text: str, size: int = 16):
    """Split text into stream chunks at word boundaries."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        while end < len(text) and not text[end].isspace() and end - start < 64:
            end += 1
        yield text[start:end]
        start = end
