"""How long a query round waits for a silent respondent: pure rules, time as
an input (the query round and its drivers use them; see query_round.py).

- :func:`card_seconds`: the time an expert's card announces for a full
  answer to a prompt (its measured speeds, times one more than its load).
- :class:`LatencyBook`: what the answers actually took, as a ratio to the
  card's figure, per expert, learned across rounds. A card is measured once
  when its node starts, on a quiet machine or not: under CPU contention or
  a queue of queries it underestimates, and a round that trusts it gives up
  on experts that are still working. The book keeps a smoothed ratio and its
  mean deviation (the estimator TCP uses for its retransmission timeout,
  RFC 6298), and counts a respondent given up on as twice what it was
  waited for (a censored time: at least that long; doubling is TCP's
  back-off on a timeout).
- :func:`patience`: ``factor`` x the slowest respondent's expected time,
  the card's figure scaled up by what the book learned (never down: a card
  that is too slow only makes a round wait longer), at least ``floor`` and
  at most half the deadline, so that another expert still has the other half.
- :func:`still_wanted`: past its patience, a silent respondent whose
  standing in the domain is better than that of every respondent with a
  usable answer is waited for one more patience, rather than dropped for a
  faster answer from an expert with less standing, if another expert would
  still have a patience before the deadline (query_round). Not until the
  deadline: a respondent whose query or answer was lost would hold the round
  to its end, leaving no time for a tie-break or a replacement.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable, Optional, Sequence

from p2pnet import wire

Key = tuple  # (peer: bytes, expert_id: str)


def card_seconds(card: wire.ModelCard, prompt: wire.PromptBody) -> float:
    """The time ``card`` announces for a full-length answer to ``prompt``:
    its prompt (about 4 characters a token) and ``max_tokens`` at its
    measured speeds, times one more than its announced load."""
    prompt_tokens = 8 + sum(len(m.content) for m in prompt.messages) / 4
    return ((prompt_tokens / max(card.prompt_tps, 1e-3) + prompt.max_tokens / max(card.gen_tps, 1e-3))
            * (1 + max(0, card.load)))


class LatencyBook:
    """Per expert: the smoothed ratio of observed answer time to the card's
    figure (``mean``) and its mean deviation (``dev``), at most ``capacity``
    experts (the least recently seen is forgotten). Not thread-safe; one
    coordinator owns it."""

    def __init__(self, capacity: int = 1024, gain: float = 0.25, dev_gain: float = 0.25,
                 max_ratio: float = 1000.0) -> None:
        if capacity < 1 or not 0 < gain <= 1 or not 0 < dev_gain <= 1:
            raise ValueError("capacity >= 1 and gains in (0, 1]")
        self.capacity, self.gain, self.dev_gain, self.max_ratio = capacity, gain, dev_gain, max_ratio
        self._stats: OrderedDict = OrderedDict()  # key -> [mean, dev, samples]

    def __len__(self) -> int:
        return len(self._stats)

    def observe(self, key: Key, seconds: float, expected_s: float) -> None:
        """An answer from ``key`` took ``seconds`` where its card announced ``expected_s``."""
        if not (seconds >= 0 and expected_s > 0):
            return
        ratio = min(self.max_ratio, seconds / expected_s)
        st = self._stats.pop(key, None)
        if st is None:
            st = [ratio, ratio / 2, 0]  # RFC 6298: the first sample, half of it as the deviation
        else:
            st[1] = (1 - self.dev_gain) * st[1] + self.dev_gain * abs(st[0] - ratio)
            st[0] = (1 - self.gain) * st[0] + self.gain * ratio
        st[2] += 1
        self._stats[key] = st
        while len(self._stats) > self.capacity:
            self._stats.popitem(last=False)

    def gave_up(self, key: Key, waited_s: float, expected_s: float) -> None:
        """``key`` was given up on after ``waited_s``: it takes at least that
        long; counted as twice that (back-off)."""
        self.observe(key, 2 * waited_s, expected_s)

    def scale(self, key: Key) -> float:
        """How much longer than its card ``key`` takes, pessimistically
        (``mean + 2 dev``), never below 1; 1 for an expert not seen yet."""
        st = self._stats.get(key)
        return 1.0 if st is None else max(1.0, st[0] + 2 * st[1])

    def stats(self, key: Key) -> Optional[tuple]:
        """(mean ratio, deviation, samples) of ``key``, None if not seen."""
        st = self._stats.get(key)
        return None if st is None else (st[0], st[1], st[2])


def expected_seconds(ref, prompt: wire.PromptBody, book: Optional[LatencyBook]) -> float:
    """``ref``'s card figure for ``prompt``, scaled by what ``book`` learned."""
    base = card_seconds(ref.card, prompt)
    return base * (book.scale(ref.key) if book is not None else 1.0)


def patience(refs: Sequence, prompt: wire.PromptBody, deadline_s: float, factor: float, floor_s: float,
             book: Optional[LatencyBook] = None) -> float:
    """How long respondents ``refs`` may stay silent before they count as slow."""
    expected = max((expected_seconds(r, prompt, book) for r in refs), default=0.0)
    return min(deadline_s / 2, max(floor_s, factor * expected))


def still_wanted(silent: Iterable[Key], answered: Iterable[Key], domain: str,
                 standing: Callable[[bytes, str], tuple]) -> set:
    """The ``silent`` respondents worth waiting for past their patience: those
    whose standing (posterior mean) in ``domain`` is above that of every
    respondent in ``answered`` (those with a usable answer). None while
    nobody has answered: then the silent are replaced instead."""
    answered = list(answered)
    if not answered:
        return set()
    best = max(standing(k[0], domain)[0] for k in answered)
    return {k for k in silent if standing(k[0], domain)[0] > best + 1e-9}
