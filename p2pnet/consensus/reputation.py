"""Reputation: a deterministic function of the committed rating transactions.

All numbers in the state are integers in fixed point (``FP`` = 1.0), so every
machine computes byte-identical state and the same :func:`state_hash`. The rule
and why it resists sybils is described in docs/reputation.md.

``header(h).state_hash`` is the hash of the state after blocks ``1..h-1``
(the genesis state, height 0, for ``h == 1``).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from p2pnet import wire
from p2pnet.consensus.genesis import Genesis, Params

PROBE = "probe"
"""The signal whose grades fill a record's probe pool (wire.RATING_SIGNALS)."""
FP = 1_000_000
STATE_VERSION = 4
"""4: a rater's weight is earned from its probe grades only (:func:`_standing`;
the same bytes as 3, but a state stored by 3 is not what 4 replays to);
3: a record also holds the validators' latest probe grades (:data:`Record`),
which bound its mean from above; 2: a rater's say on a record is its latest
ratings (:data:`PairSay`); 1 was a cumulative budget that only decay freed."""
PROBE_POOL_CAP = 12 * FP
"""The probe pool of a record holds the validators' latest probe grades, at most
this much evidence: a new grade scales the older ones down to make room."""
PROBE_MIN_EVIDENCE = 2 * FP
"""Below this much probe evidence a record's mean is not bounded by its probes."""
PROBE_Z_PPM = 1_000_000
"""The bound is the probes' posterior mean plus this many (in ppm) of its sd."""
TX_KINDS = frozenset({wire.Rating.KIND})
"""Message kinds that may be ledger transactions."""

Record = Tuple[int, int, int, int, int, int, int, int]
"""(trusted_alpha, trusted_beta, newcomer_alpha, newcomer_beta, count, epoch,
probe_alpha, probe_beta). The probe pool is a second view of the validators'
probe grades (they count in the trusted pool too): the answer graded against a
known answer, which a colluding majority cannot outvote."""
PairSay = Tuple[int, int, int, int]
"""One rater's say on one (respondent, domain) record: (alpha, beta, epoch, trusted),
the evidence its ratings still hold in the record's trusted (1) or newcomer (0) pool."""


@dataclass(frozen=True)
class Rules:
    """What the state transition needs besides the state: params and the validators."""

    params: Params
    validators: FrozenSet[bytes]

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> "Rules":
        return cls(genesis.params, frozenset(v.peer_id for v in genesis.validators))


@dataclass(frozen=True)
class RatingTx:
    """A decoded, signature-checked rating transaction."""

    raw: bytes
    tx_hash: bytes
    rater: bytes
    nonce: int
    rating: wire.Rating


def tx_hash(raw: bytes) -> bytes:
    return hashlib.sha256(raw).digest()


def decode_tx(raw: bytes, max_tx_bytes: int, env: Optional[wire.Envelope] = None) -> RatingTx:
    """Open (size, schema, signature) one tx; raises ValueError with a reason.
    ``env``: the same bytes already opened by wire.open_envelope."""
    if len(raw) > max_tx_bytes:
        raise ValueError(f"oversize: {len(raw)} > {max_tx_bytes} bytes")
    if env is None or env.raw != raw:
        try:
            env = wire.open_envelope(raw, max_bytes=max_tx_bytes)
        except wire.WireError as exc:
            raise ValueError(str(exc)) from None
    if env.kind not in TX_KINDS:
        raise ValueError(f"not a transaction type: {env.kind}")
    rating = env.message
    if rating.respondent == env.sender:
        raise ValueError("self-rating: rater is the respondent")
    return RatingTx(bytes(raw), tx_hash(raw), env.sender, env.seq, rating)


def score_fp(score: float) -> int:
    """A rating's score in fixed point. IEEE-754 multiply and round are exact
    operations, so this is the same on every machine."""
    return min(FP, max(0, round(score * FP)))


def decay_factor(ppm: int, epochs: int) -> int:
    """``(ppm / 1e6) ** epochs`` in fixed point, by integer squaring."""
    result, base = FP, ppm
    while epochs and result:
        if epochs & 1:
            result = result * base // FP
        base = base * base // FP
        epochs >>= 1
    return result


def _array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` items."""
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


class _Packed:
    """Packed rows of the state's nested tables, kept per outer key while the
    inner dict is the same object. States share unchanged inner dicts with
    their parent (see :func:`apply_txs`), so a block re-packs only the
    respondents and raters it touched; the bytes are those of packing the
    whole table at once."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows: Dict[tuple, Tuple[dict, int, bytes]] = {}

    def table(self, name: str, table: Dict[bytes, dict]) -> bytes:
        parts, count = [], 0
        for outer in sorted(table):
            inner = table[outer]
            hit = self.rows.get((name, outer))
            if hit is None or hit[0] is not inner:
                packed = b"".join(wire.packb([outer, *(key if isinstance(key, tuple) else (key,)), *inner[key]])
                                  for key in sorted(inner))
                hit = self.rows[(name, outer)] = (inner, len(inner), packed)
            parts.append(hit[2])
            count += hit[1]
        return _array_header(count) + b"".join(parts)


class ReputationState:
    """Immutable reputation state. Treat the dicts as read-only; :func:`apply_block`
    returns a new state sharing unchanged parts."""

    __slots__ = ("rules", "height", "nonces", "records", "pairs", "_hash", "_bytes", "_packed")

    def __init__(self, rules: Rules, height: int = 0,
                 nonces: Optional[Dict[bytes, int]] = None,
                 records: Optional[Dict[bytes, Dict[str, Record]]] = None,
                 pairs: Optional[Dict[bytes, Dict[Tuple[bytes, str], PairSay]]] = None,
                 packed: Optional[_Packed] = None) -> None:
        self.rules = rules
        self.height = height
        self.nonces = nonces if nonces is not None else {}
        self.records = records if records is not None else {}
        self.pairs = pairs if pairs is not None else {}
        self._hash: Optional[bytes] = None
        self._bytes: Optional[bytes] = None
        self._packed = packed if packed is not None else _Packed()

    # ---- canonical bytes
    def to_bytes(self) -> bytes:
        """msgpack of ``[STATE_VERSION, height, [[rater, nonce]...],
        [[respondent, domain, *record]...], [[rater, respondent, domain,
        *say]...]]``, every list sorted by its keys."""
        if self._bytes is None:
            self._bytes = (_array_header(5) + wire.packb(STATE_VERSION) + wire.packb(self.height)
                           + wire.packb([[k, self.nonces[k]] for k in sorted(self.nonces)])
                           + self._packed.table("records", self.records)
                           + self._packed.table("pairs", self.pairs))
        return self._bytes

    @staticmethod
    def version_of(data: bytes) -> object:
        """The format (``STATE_VERSION``) that state bytes start with, read from
        the 2nd byte (every format so far is a small positive int) without
        decoding the rest; None if the bytes do not start like a state."""
        return data[1] if len(data) > 1 and data[0] == 0x95 and data[1] < 0x80 else None

    @classmethod
    def from_bytes(cls, rules: Rules, data: bytes) -> "ReputationState":
        obj = wire.unpackb(data, max_bytes=1 << 40)
        if not isinstance(obj, list) or len(obj) != 5:
            raise ValueError("not a reputation state")
        if obj[0] != STATE_VERSION:
            raise ValueError(f"reputation state of format {obj[0]!r}, written by another release of p2pnet "
                             f"(this one reads format {STATE_VERSION})")
        _, height, nonces, records, pairs = obj
        recs: Dict[bytes, Dict[str, Record]] = {}
        for r, d, *vals in records:
            recs.setdefault(r, {})[d] = tuple(vals)
        prs: Dict[bytes, Dict[Tuple[bytes, str], PairSay]] = {}
        for x, r, d, *vals in pairs:
            prs.setdefault(x, {})[(r, d)] = tuple(vals)
        return cls(rules, height, {k: v for k, v in nonces}, recs, prs)

    def hash(self) -> bytes:
        if self._hash is None:
            self._hash = hashlib.sha256(self.to_bytes()).digest()
        return self._hash

    def nonce(self, rater: bytes) -> int:
        return self.nonces.get(rater, 0)

    @property
    def epoch(self) -> int:
        return self.height // self.rules.params.decay_epoch_blocks


def genesis_state(genesis: Genesis) -> ReputationState:
    return ReputationState(Rules.from_genesis(genesis))


def state_hash(state: ReputationState) -> bytes:
    """sha256 of the state's canonical bytes."""
    return state.hash()


# ------------------------------------------------------------------ the rule


def _decay_record(rec: Record, epoch: int, ppm: int) -> Record:
    ta, tb, na, nb, count, e, pa, pb = rec
    if e == epoch:
        return rec
    f = decay_factor(ppm, epoch - e)
    return (ta * f // FP, tb * f // FP, na * f // FP, nb * f // FP, count, epoch, pa * f // FP, pb * f // FP)


def probe_bound(rec: Record, p: Params) -> Optional[int]:
    """The highest mean (FP) that a record's probe pool supports: the probes'
    posterior mean plus ``PROBE_Z_PPM`` of its sd (integer square root), or None
    while the pool holds less than ``PROBE_MIN_EVIDENCE``. Praise, agreement and
    votes a ring wins cannot lift a mean above what graded probes show; nothing
    here lifts a mean (an expert that degrades falls with its other ratings)."""
    pa, pb = rec[6], rec[7]
    if pa + pb < PROBE_MIN_EVIDENCE:
        return None
    a, b = p.prior_alpha + pa, p.prior_beta + pb
    n = a + b
    mean = a * FP // n
    sd = math.isqrt(a * b * FP * FP * FP // (n * n * (n + FP)))
    return min(FP, mean + sd * PROBE_Z_PPM // FP)


def _beta_mean(alpha: int, beta: int, p: Params) -> int:
    """Posterior mean (FP) of evidence (alpha, beta) with the prior."""
    return (p.prior_alpha + alpha) * FP // (p.prior_alpha + p.prior_beta + alpha + beta)


def _mean(alpha: int, beta: int, rec: Record, p: Params) -> int:
    """Posterior mean (FP) of evidence (alpha, beta) with the prior, at most the
    record's :func:`probe_bound`."""
    mean = _beta_mean(alpha, beta, p)
    bound = probe_bound(rec, p)
    return mean if bound is None else min(mean, bound)


def _fade_say(say: Optional[PairSay], epoch: int, ppm: int, room: int, trusted: int,
              pools: List[List[int]]) -> Tuple[int, int]:
    """What a rater's earlier say on a record keeps before its next rating:
    all of it (decayed) if it fits in ``room``, else scaled down to ``room``
    (the older ratings fade first, in proportion), and nothing if the rater
    changed pool (newcomer <-> trusted). What it loses leaves ``pools[pool]``
    (``[[newcomer alpha, beta], [trusted alpha, beta]]``, updated in place)."""
    if say is None:
        return 0, 0
    sa, sb, se, st = say
    f = decay_factor(ppm, epoch - se)
    sa, sb = sa * f // FP, sb * f // FP
    keep_a, keep_b = sa, sb
    if st != trusted:
        keep_a = keep_b = 0
    elif sa + sb > room:
        keep_a, keep_b = sa * room // (sa + sb), sb * room // (sa + sb)
    pool = pools[st]
    # the record decays apart from the say, so rounding may leave it a little short
    pool[0], pool[1] = max(0, pool[0] - (sa - keep_a)), max(0, pool[1] - (sb - keep_b))
    return keep_a, keep_b


def _probe_pool(pa: int, pb: int, eff: int, s: int) -> Tuple[int, int]:
    """A record's probe pool after one more validator's probe grade ``s`` (FP)
    of evidence ``eff``: the older grades are scaled down, in proportion, to
    leave room for it within ``PROBE_POOL_CAP``, so the pool is the latest grades."""
    eff = min(eff, PROBE_POOL_CAP)
    room = PROBE_POOL_CAP - eff
    if pa + pb > room:
        pa, pb = pa * room // (pa + pb), pb * room // (pa + pb)
    return pa + eff * s // FP, pb + eff * (FP - s) // FP


def _effective(rec: Record, p: Params) -> Tuple[int, int]:
    """Alpha and beta evidence of a record, the newcomer pool clipped to its cap."""
    ta, tb, na, nb = rec[:4]
    pool = na + nb
    if pool > p.newcomer_pool_cap:
        na, nb = na * p.newcomer_pool_cap // pool, nb * p.newcomer_pool_cap // pool
    return ta + na, tb + nb


def _standing(state: ReputationState, peer: bytes) -> int:
    """A non-validator rater's weight, earned only from the validators' probe
    grades of its own answers (each record's probe pool): max over domains of
    (2*mean - 1) * E/(E + K), capped, with the probes' posterior mean and
    evidence. Not from all its trusted evidence: that holds the ratings of
    other trusted raters, so one ring member that passed its first probes by
    luck could lend its ring standing, and the ring's ratings (its members
    1.0, everyone else 0.0) would then drag honest experts down with weight."""
    p = state.rules.params
    best = 0
    for rec in state.records.get(peer, {}).values():
        rec = _decay_record(rec, state.epoch, p.decay_per_epoch_ppm)
        evidence = rec[6] + rec[7]
        mean = _beta_mean(rec[6], rec[7], p)  # the probe pool's alone
        s = max(0, 2 * mean - FP) * evidence // (evidence + p.standing_half_evidence)
        best = max(best, s)
    return min(best, p.max_rater_weight)


def rater_weight(state: ReputationState, rater: bytes) -> Tuple[int, bool]:
    """(weight in FP, trusted?) of a rater in ``state``."""
    p = state.rules.params
    if rater in state.rules.validators:
        return p.validator_weight, True
    s = _standing(state, rater)
    if s >= p.newcomer_weight:
        return s, True
    return p.newcomer_weight, False


def check_block_txs(state: ReputationState, txs: Sequence[RatingTx]) -> Optional[str]:
    """Block-level rules against the state before the block; None if fine."""
    p = state.rules.params
    if len(txs) > p.max_block_txs:
        return f"{len(txs)} txs > max_block_txs {p.max_block_txs}"
    last: Dict[bytes, int] = {}
    per_rater: Dict[bytes, int] = {}
    for i, tx in enumerate(txs):
        prev = last.get(tx.rater, state.nonce(tx.rater))
        if tx.nonce <= prev:
            return f"tx {i}: nonce {tx.nonce} not above {prev}"
        last[tx.rater] = tx.nonce
        per_rater[tx.rater] = per_rater.get(tx.rater, 0) + 1
        if per_rater[tx.rater] > p.max_ratings_per_rater_per_block:
            return f"tx {i}: more than {p.max_ratings_per_rater_per_block} ratings from one rater"
        if tx.rater == tx.rating.respondent:
            return f"tx {i}: self-rating"
    return None


def apply_txs(state: ReputationState, height: int, txs: Sequence[RatingTx]) -> ReputationState:
    """The state after a block at ``height`` with these (already checked) txs.

    Rater weights come from ``state`` (before the block), so the order of txs
    inside a block does not change anyone's weight."""
    if height != state.height + 1:
        raise ValueError(f"block {height} does not follow state height {state.height}")
    p = state.rules.params
    new = ReputationState(state.rules, height, dict(state.nonces), dict(state.records), dict(state.pairs),
                          packed=state._packed)
    epoch = new.epoch
    weights: Dict[bytes, Tuple[int, bool]] = {}
    copied_r: set = set()
    copied_p: set = set()
    per_rater: Dict[bytes, int] = {}
    for tx in txs:
        if tx.nonce <= new.nonces.get(tx.rater, 0) or tx.rater == tx.rating.respondent:
            continue  # defensive: check_block_txs rejects such blocks
        n = per_rater.get(tx.rater, 0)
        if n >= p.max_ratings_per_rater_per_block:
            continue
        per_rater[tx.rater] = n + 1
        new.nonces[tx.rater] = tx.nonce
        if tx.rater not in weights:
            weights[tx.rater] = rater_weight(state, tx.rater)
        weight, trusted = weights[tx.rater]
        resp, domain = tx.rating.respondent, tx.rating.domain
        if tx.rater not in copied_p:
            new.pairs[tx.rater] = dict(new.pairs.get(tx.rater, {}))
            copied_p.add(tx.rater)
        if resp not in copied_r:
            new.records[resp] = dict(new.records.get(resp, {}))
            copied_r.add(resp)
        rec = new.records[resp].get(domain, (0, 0, 0, 0, 0, epoch, 0, 0))
        ta, tb, na, nb, count, _, pa, pb = _decay_record(rec, epoch, p.decay_per_epoch_ppm)
        pools = [[na, nb], [ta, tb]]  # [newcomer, trusted]
        say = new.pairs[tx.rater].get((resp, domain))
        # the signal scales what the rating adds; the rater's say stays within pair_cap * weight
        cap = p.pair_cap * weight // FP
        eff = min(weight * p.signal_weight(tx.rating.signal) // FP, cap)
        sa, sb = _fade_say(say, epoch, p.decay_per_epoch_ppm, cap - eff, int(trusted), pools)
        s = score_fp(tx.rating.score)
        da, db = eff * s // FP, eff * (FP - s) // FP
        new.pairs[tx.rater][(resp, domain)] = (sa + da, sb + db, epoch, int(trusted))
        pool = pools[int(trusted)]
        pool[0], pool[1] = pool[0] + da, pool[1] + db
        (na, nb), (ta, tb) = pools
        if tx.rater in state.rules.validators and PROBE in wire.signal_parts(tx.rating.signal):
            pa, pb = _probe_pool(pa, pb, eff, s)
        new.records[resp][domain] = (ta, tb, na, nb, count + 1, epoch, pa, pb)
    return new


def decode_block_txs(raw_txs: Iterable[bytes], params: Params, cache=None) -> List[RatingTx]:
    """Decode a block's txs (ValueError on the first bad one). ``cache`` maps
    tx hash -> RatingTx already verified (e.g. the mempool's)."""
    out = []
    for i, raw in enumerate(raw_txs):
        h = tx_hash(raw)
        tx = cache.get(h) if cache is not None else None
        if tx is None:
            try:
                tx = decode_tx(raw, params.max_tx_bytes)
            except ValueError as exc:
                raise ValueError(f"tx {i}: {exc}") from None
        out.append(tx)
    if len({tx.tx_hash for tx in out}) != len(out):
        raise ValueError("duplicate tx in block")
    return out


def apply_block(state: ReputationState, block: wire.Block, cache=None) -> ReputationState:
    """Check and apply one block's txs; ValueError if they break a rule."""
    txs = decode_block_txs(block.txs, state.rules.params, cache)
    err = check_block_txs(state, txs)
    if err:
        raise ValueError(err)
    return apply_txs(state, block.header.height, txs)


# ------------------------------------------------------------------ queries


@dataclass(frozen=True)
class Standing:
    peer_id: str
    domain: str
    score: float
    """posterior mean in [0, 1]"""
    confidence: float
    """evidence / (evidence + standing_half_evidence)"""
    count: int
    """ratings received (not decayed)"""
    score_fp: int

    def to_json(self) -> dict:
        return {"peer_id": self.peer_id, "domain": self.domain, "score": self.score,
                "confidence": self.confidence, "count": self.count, "score_fp": self.score_fp}


def _standing_of(state: ReputationState, resp: bytes, domain: str, rec: Record) -> Standing:
    p = state.rules.params
    rec = _decay_record(rec, state.epoch, p.decay_per_epoch_ppm)
    ea, eb = _effective(rec, p)
    s = _mean(ea, eb, rec, p)
    conf = (ea + eb) * FP // (ea + eb + p.standing_half_evidence)
    return Standing(wire.peer_id_str(resp), domain, s / FP, conf / FP, rec[4], s)


def standings(state: ReputationState, domain: Optional[str] = None) -> List[Standing]:
    """All (respondent, domain) records, best score first."""
    out = [
        _standing_of(state, resp, d, rec)
        for resp, recs in state.records.items()
        for d, rec in recs.items()
        if domain is None or d == domain
    ]
    out.sort(key=lambda s: (-s.score_fp, -s.count, s.peer_id, s.domain))
    return out


def standing_of(state: ReputationState, respondent: bytes, domain: str) -> Optional[Standing]:
    """The standing of ``respondent`` in ``domain``, or None if never rated there."""
    rec = state.records.get(respondent, {}).get(domain)
    return None if rec is None else _standing_of(state, respondent, domain, rec)


def standing_view(state: ReputationState, respondent: bytes, domain: str) -> Tuple[float, float, float]:
    """What routing reads of the chain: (posterior mean in [0, 1], evidence,
    probe evidence). Evidence is the decayed, rater-weighted ratings behind
    the mean in rating units (a full-weight rating adds 1.0; the newcomer pool
    counts up to its cap); probe evidence is how much of it is the
    validators' latest probe grades (the record's probe pool, decayed): the
    part graded against a known answer, which praise and won votes cannot
    supply. Unrated: (the prior mean, 0.0, 0.0). The node's coordinator and
    the simulator both read standings through this one function, so the
    selection policy's evidence thresholds mean the same in both."""
    p = state.rules.params
    rec = state.records.get(respondent, {}).get(domain)
    if rec is None:
        return p.prior_alpha / (p.prior_alpha + p.prior_beta), 0.0, 0.0
    rec = _decay_record(rec, state.epoch, p.decay_per_epoch_ppm)
    ea, eb = _effective(rec, p)
    return _mean(ea, eb, rec, p) / FP, (ea + eb) / FP, (rec[6] + rec[7]) / FP


def score(state: ReputationState, respondent: bytes, domain: str) -> float:
    """Posterior mean score of ``respondent`` in ``domain`` (the prior mean if unrated)."""
    rec = state.records.get(respondent, {}).get(domain)
    if rec is None:
        p = state.rules.params
        return p.prior_alpha / (p.prior_alpha + p.prior_beta)
    return _standing_of(state, respondent, domain, rec).score
