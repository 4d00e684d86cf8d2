"""What a query round (query_round.QueryRound) takes in and gives out: the
events a driver feeds it and the actions it asks the driver to carry out.
Plain frozen dataclasses; no rules here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from p2pnet import wire
from p2pnet.experts.directory import ExpertRef
from p2pnet.experts.verdict import Outcome

Key = tuple  # (peer: bytes, expert_id: str)


# ------------------------------------------------------------------ events

@dataclass(frozen=True)
class Reply:
    """An expert's answer to batch ``batch_id`` (opened and checked by the
    driver; an unreadable one arrives with status "invalid"), or a failure to
    reach it (status "busy": the query could not be sent)."""

    batch_id: bytes
    key: Key
    status: str
    text: str = ""
    completion_tokens: int = 0
    finish_reason: str = ""
    confidence: Optional[float] = None
    answer_hash: bytes = b""
    prompt_tokens: int = 0
    gen_ms: int = 0
    error: str = ""
    passages: tuple = ()  # ids of the knowledge passages the expert put into its prompt


@dataclass(frozen=True)
class Chunk:
    """Piece ``index`` of the text a streaming respondent is generating."""

    batch_id: bytes
    key: Key
    index: int
    text: str


@dataclass(frozen=True)
class Gone:
    """Respondents of batch ``batch_id`` that are no longer connected."""

    batch_id: bytes
    keys: tuple


@dataclass(frozen=True)
class Tick:
    """Time passed: the driver's timer for :meth:`QueryRound.wake_at` fired."""


Event = Union[Reply, Chunk, Gone, Tick]


# ----------------------------------------------------------------- actions

@dataclass(frozen=True)
class Ask:
    """Send ``prompt`` sealed to each of ``refs`` as query ``batch_id``, to be
    answered by ``deadline`` (round time); ``stream_key`` streams its text.
    ``traffic``: a user query's respondents (not judges), for traffic shares."""

    batch_id: bytes
    refs: tuple[ExpertRef, ...]
    prompt: wire.PromptBody
    deadline: float
    stream_key: Optional[Key] = None
    traffic: bool = True


@dataclass(frozen=True)
class Cancel:
    """Cancel batch ``batch_id`` wherever it still runs; ``keys`` stayed
    silent (``why``: "slow" or "timeout"); forget those no longer connected."""

    batch_id: bytes
    keys: tuple
    why: str


@dataclass(frozen=True)
class Close:
    """Batch ``batch_id`` is over: stop its local work, ignore late answers."""

    batch_id: bytes


@dataclass(frozen=True)
class Forget:
    """``key`` disconnected while asked: forget its cards until it announces again."""

    key: Key


@dataclass(frozen=True)
class Stream:
    """Pass ``text`` on to the client."""

    text: str


@dataclass(frozen=True)
class Rate:
    """Record this rating (signed by the driver) for the ledger."""

    rating: wire.Rating


@dataclass(frozen=True)
class Done:
    """The round is over: its outcome (an answer, or the error to raise)."""

    outcome: Outcome


Action = Union[Ask, Cancel, Close, Forget, Stream, Rate, Done]
