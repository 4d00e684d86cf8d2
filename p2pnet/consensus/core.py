"""Tendermint consensus (Buchman, Kwon, Milosevic, Algorithm 1) as a pure state machine.

No I/O and no clock: :meth:`Core.step` takes an event and the current time in
ms and returns a list of actions for the driver to carry out, in order. The
driver must finish a :class:`PersistSigned` before it sends any later
:class:`Broadcast`, and must apply a :class:`CommitBlock` before it feeds the
core the next event.

Block validity is asked of an injected :class:`Application`; the core checks
only what consensus owns (header links, proposer, time, commit of the previous
block, tx root, state hash).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

from p2pnet import wire
from p2pnet.consensus.genesis import Genesis
from p2pnet.consensus.validators import (
    PRECOMMIT, PREVOTE, ValidatorSet, Verify, commit_hash, tx_root,
)
from p2pnet.consensus.events import (  # noqa: F401 (the events and actions are core's interface)
    Action, Application, BlockIn, Broadcast, COMMIT, CommitBlock, Event, MAX_CONFLICTING_VOTES,
    MAX_FUTURE_EVENTS, MAX_ROUNDS_AHEAD, Misbehaviour, PRECOMMIT_STEP, PREVOTE_STEP, PROPOSE,
    PersistSigned, ProposalIn, REBROADCAST_VOTES, RequestBlocks, SIGN_PRECOMMIT, SIGN_PREVOTE,
    SIGN_PROPOSAL, STEP_NAMES, SYNC_RETRY_MS, ScheduleTimeout, SignState, Start, TimeoutIn, Tip,
    TxsAvailable, VoteIn, VoteSigner, WAIT, _CheckedVoteIn, decode_block,
)


# ----------------------------------------------------------------- the core


@dataclass
class _Height:
    """Everything that is reset at a new height."""

    proposals: Dict[int, Tuple[wire.Block, int, bytes]] = field(default_factory=dict)
    blocks: Dict[bytes, wire.Block] = field(default_factory=dict)
    validity: Dict[bytes, Optional[str]] = field(default_factory=dict)
    votes: Dict[Tuple[int, int], Dict[bytes, wire.Vote]] = field(default_factory=dict)
    """(round, type) -> validator -> its first vote"""
    by_hash: Dict[Tuple[int, int], Dict[bytes, Dict[bytes, wire.Vote]]] = field(default_factory=dict)
    """(round, type) -> block hash -> validator -> vote (an equivocator is in several)"""
    tally: Dict[Tuple[int, int], Dict[bytes, int]] = field(default_factory=dict)
    any_power: Dict[Tuple[int, int], int] = field(default_factory=dict)
    round_senders: Dict[int, Set[bytes]] = field(default_factory=dict)
    fired: Set[Tuple[str, int]] = field(default_factory=set)
    own_votes: List[wire.Vote] = field(default_factory=list)
    fetch_asked: Set[bytes] = field(default_factory=set)


class Core:
    def __init__(self, genesis: Genesis, app: Application, tip: Tip,
                 signer: Optional[VoteSigner] = None, sign_state: Optional[SignState] = None,
                 verify: Verify = wire.verify_signature) -> None:
        self.genesis = genesis
        self.chain_id = genesis.chain_id
        self.params = genesis.params
        self.vset = ValidatorSet(genesis.validators)
        self.app = app
        self.tip = tip
        self.signer = signer
        self.me = signer.peer_id if signer is not None else b""
        self.is_validator = self.me in self.vset
        self.sign_state = sign_state
        self.verify = verify
        self.height = tip.height + 1
        self.round = 0
        self.round_step = WAIT
        self.locked_round, self.locked_block = -1, None
        self.valid_round, self.valid_block = -1, None
        self.h = _Height()
        self.future: List[Event] = []
        self.ahead: Dict[bytes, int] = {}
        self._sync_asked: Tuple[int, int] = (0, -SYNC_RETRY_MS)
        self._out: List[Action] = []
        self._now = 0
        self.counters: Dict[str, int] = {}
        self.last_invalid: Optional[str] = None

    # ------------------------------------------------------------ public
    def step(self, event: Event, now_ms: int) -> List[Action]:
        self._now = now_ms
        self._out = []
        self._dispatch(event)
        out, self._out = self._out, []
        return out

    def status(self) -> Tuple[int, int, str]:
        return self.height, self.round, STEP_NAMES[self.round_step]

    # ------------------------------------------------------------ dispatch
    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, VoteIn):
            self._on_vote(event.vote, checked=isinstance(event, _CheckedVoteIn))
        elif isinstance(event, ProposalIn):
            self._on_proposal(event.sender, event.proposal)
        elif isinstance(event, TimeoutIn):
            self._on_timeout(event)
        elif isinstance(event, TxsAvailable):
            if self.round_step == WAIT:
                self._start_round(0)
                self._evaluate()
        elif isinstance(event, BlockIn):
            self._on_block(event.block, event.commit)
        elif isinstance(event, Start):
            self._enter_height()
        else:
            raise TypeError(f"unknown event {event!r}")

    # ------------------------------------------------------------ heights and rounds
    def _enter_height(self) -> None:
        self.round, self.round_step = 0, WAIT
        self.h = _Height()
        self.locked_round, self.locked_block = -1, None
        self.valid_round, self.valid_block = -1, None
        ss = self.sign_state
        interval = self.params.create_empty_blocks_interval_ms
        wait = self.tip.time_ms + interval - self._now
        if ss is not None and ss.height == self.height:
            self._resume(ss)
        elif interval == 0 or wait <= 0 or self.app.has_txs():
            self._start_round(0)
        else:
            self._emit(ScheduleTimeout(self.height, 0, "wait", wait))
        replay, self.future = self.future, []
        for ev in replay:
            self._dispatch(ev)
        self._evaluate()

    def _resume(self, ss: SignState) -> None:
        """Restarted in the middle of a height: take back the lock, the round
        and the step we had signed for, and our last vote (its signature is
        in the record), so the round can go on without signing anything twice."""
        if ss.locked_round >= 0 and ss.locked_block:
            block = decode_block(ss.locked_block)
            # valid_round >= locked_round (L36): as proposer, re-propose the
            # locked block, not a new one that no node locked on it prevotes
            self.locked_round, self.locked_block = ss.locked_round, block
            self.valid_round, self.valid_block = ss.locked_round, block
            self.h.blocks[block.hash()] = block
        self._start_round(ss.round)
        for packed in ss.votes:
            vote = wire.Vote.unpack(packed)
            if vote.height == self.height and vote.validator == self.me:
                self.h.own_votes.append(vote)
                self._add_vote(vote)
                self._emit(Broadcast(vote))
        if ss.step >= SIGN_PREVOTE:
            self.round_step = PREVOTE_STEP if ss.step == SIGN_PREVOTE else PRECOMMIT_STEP

    def _start_round(self, round_: int) -> None:
        self.round, self.round_step = round_, PROPOSE
        self._emit(ScheduleTimeout(self.height, round_, "propose", self.params.timeout_ms("propose", round_)))
        self._emit(ScheduleTimeout(self.height, round_, "retry", self._retry_ms()))
        if self.is_validator and self.vset.proposer(self.height, round_) == self.me:
            reuse = self.valid_block is not None and self.valid_round < round_
            block = self.valid_block if reuse else self._build_block()
            record = self._may_sign(SIGN_PROPOSAL, block.hash())
            if record is None:
                self._count("refused_to_sign")
                return
            self._emit(PersistSigned(record))
            proposal = wire.Proposal(self.height, round_, self.valid_round if reuse else -1, block)
            self._emit(Broadcast(proposal))
            self._on_proposal(self.me, proposal)

    def _build_block(self) -> wire.Block:
        txs = tuple(self.app.propose_txs(self.height))[: self.params.max_block_txs]
        last = self.tip.commit
        header = wire.BlockHeader(
            chain_id=self.chain_id, height=self.height,
            time_ms=max(self._now, self.tip.time_ms + 1),
            prev_hash=self.tip.block_hash, proposer=self.me, tx_root=tx_root(txs),
            state_hash=self.app.state_hash(), last_commit_hash=commit_hash(last),
        )
        return wire.Block(header, txs, last)

    # ------------------------------------------------------------ signing
    def _may_sign(self, step: int, block_hash: bytes) -> Optional[SignState]:
        """The record to persist before signing (h, r, step), or None if this
        validator already signed something at or beyond it."""
        hrs = (self.height, self.round, step)
        ss = self.sign_state
        if ss is not None and hrs <= ss.hrs():
            return None
        lock = self.locked_block.pack() if self.locked_block is not None else b""
        recent = tuple(v.pack() for v in self.h.own_votes[-REBROADCAST_VOTES:])
        return SignState(self.height, self.round, step, block_hash, b"", self.locked_round, lock, recent)

    def _vote(self, vote_type: int, block_hash: bytes) -> None:
        if not self.is_validator:
            return
        step = SIGN_PREVOTE if vote_type == PREVOTE else SIGN_PRECOMMIT
        ss = self.sign_state
        if ss is not None and ss.hrs() == (self.height, self.round, step) and ss.block_hash == block_hash \
                and ss.signature:
            # restarted after signing exactly this: the same vote again is safe
            vote = wire.Vote(self.chain_id, vote_type, self.height, self.round, block_hash, self.me, ss.signature)
            self._emit(Broadcast(vote))
            self._add_vote(vote)
            return
        record = self._may_sign(step, block_hash)
        if record is None:
            self._count("refused_to_sign")
            return
        unsigned = wire.Vote(self.chain_id, vote_type, self.height, self.round, block_hash, self.me)
        sig = self.signer.sign_bytes(unsigned.sign_bytes())
        vote = wire.Vote(self.chain_id, vote_type, self.height, self.round, block_hash, self.me, sig)
        recent = tuple(v.pack() for v in self.h.own_votes[-(REBROADCAST_VOTES - 1):]) + (vote.pack(),)
        record = SignState(record.height, record.round, record.step, block_hash, sig,
                           record.locked_round, record.locked_block, recent)
        self.sign_state = record
        self._emit(PersistSigned(record))
        self._emit(Broadcast(vote))
        self.h.own_votes.append(vote)
        self._add_vote(vote)

    def _emit(self, action: Action) -> None:
        if isinstance(action, PersistSigned):
            self.sign_state = action.record
        self._out.append(action)

    # ------------------------------------------------------------ inbound
    def _future(self, height: int, sender: bytes, event: Event) -> None:
        """A message from a later height: keep it if it is for the next one,
        and fetch blocks if we are behind."""
        if sender in self.vset:
            self.ahead[sender] = max(self.ahead.get(sender, 0), height)
        if height == self.height + 1 and len(self.future) < MAX_FUTURE_EVENTS:
            self.future.append(event)
        if height >= self.height + 2 or (self.round_step == WAIT and height > self.height):
            self._maybe_sync()

    def _maybe_sync(self, eager: bool = False) -> None:
        """Ask for the blocks that validators with more than 1/3 of the power
        (so at least one honest one) have already committed; ``eager`` (we
        are stuck): those any validator claims to have. Fetched blocks are
        checked against their commits, so asking costs only bandwidth."""
        if self.round_step == COMMIT:
            return
        heights = sorted(((h, p) for p, h in self.ahead.items() if h > self.height), reverse=True)
        power, target = 0, 0
        for h, p in heights:
            power += self.vset.power(p)
            if power >= self.vset.third:
                target = h
                break
        if not target and heights and (eager or heights[0][0] >= self.height + 2):
            target = heights[0][0]  # one validator claims to be well ahead: cheap to ask, checked anyway
        if not target:
            return
        last_target, last_time = self._sync_asked
        if target <= last_target and self._now - last_time < SYNC_RETRY_MS:
            return
        self._sync_asked = (target, self._now)
        peers = tuple(p for h, p in heights if h >= target)
        self._emit(RequestBlocks(self.height, target - 1, peers))

    def _on_vote(self, vote: wire.Vote, checked: bool = False) -> None:
        if vote.chain_id != self.chain_id or vote.validator not in self.vset:
            self._count("vote_foreign")
            return
        if vote.height < self.height or (vote.height == self.height and self.round_step == COMMIT):
            return
        if vote.round > self.round + MAX_ROUNDS_AHEAD:
            self._count("vote_far_round")
            return
        if not checked and not self.verify(self.vset.by_id[vote.validator].pub_key, vote.sign_bytes(),
                                           vote.signature):
            self._count("vote_bad_signature")
            return
        if vote.height > self.height:
            self._future(vote.height, vote.validator, _CheckedVoteIn(vote))
            return
        key = (vote.round, vote.vote_type)
        per_hash = self.h.by_hash.get(key, {})
        if vote.validator in per_hash.get(vote.block_hash, ()):
            return  # a duplicate
        if vote.validator in self.h.votes.get(key, ()):
            # An equivocation. Count it towards its own block anyway (as
            # Tendermint does for blocks a peer saw 2/3 for): another honest
            # node may have seen 2/3 with it, and the POL rule needs the same
            # votes here. Quorum intersection still holds: honest nodes vote once.
            self._emit(Misbehaviour(vote.validator, f"equivocating vote at round {vote.round}"))
            if sum(vote.validator in vs for vs in per_hash.values()) >= MAX_CONFLICTING_VOTES:
                return
        self._add_vote(vote)
        if self.round_step == WAIT:
            self._start_round(0)
        self._evaluate()

    def _add_vote(self, vote: wire.Vote) -> None:
        key = (vote.round, vote.vote_type)
        power = self.vset.power(vote.validator)
        self.h.by_hash.setdefault(key, {}).setdefault(vote.block_hash, {})[vote.validator] = vote
        tally = self.h.tally.setdefault(key, {})
        tally[vote.block_hash] = tally.get(vote.block_hash, 0) + power
        first = self.h.votes.setdefault(key, {})
        if vote.validator not in first:
            first[vote.validator] = vote
            self.h.any_power[key] = self.h.any_power.get(key, 0) + power
        self.h.round_senders.setdefault(vote.round, set()).add(vote.validator)

    def _on_proposal(self, sender: bytes, p: wire.Proposal) -> None:
        if p.height < self.height or (p.height == self.height and self.round_step == COMMIT):
            return
        if p.block.header.chain_id != self.chain_id or sender not in self.vset:
            self._count("proposal_foreign")
            return
        if p.height > self.height:
            self._future(p.height, sender, ProposalIn(sender, p))
            return
        if p.round > self.round + MAX_ROUNDS_AHEAD:
            return
        if self.vset.proposer(p.height, p.round) != sender:
            self._emit(Misbehaviour(sender, f"proposal for round {p.round} from a non-proposer"))
            return
        block_hash = p.block.hash()
        prior = self.h.proposals.get(p.round)
        if prior is not None:
            if prior[2] != block_hash:
                self._emit(Misbehaviour(sender, f"equivocating proposal at round {p.round}"))
            return
        self.h.proposals[p.round] = (p.block, p.pol_round, block_hash)
        self.h.blocks.setdefault(block_hash, p.block)
        self.h.round_senders.setdefault(p.round, set()).add(sender)
        if self.round_step == WAIT:
            self._start_round(0)
        self._evaluate()

    def _on_block(self, block: wire.Block, commit: wire.Commit) -> None:
        if block.header.height != self.height or self.round_step == COMMIT:
            return
        block_hash = block.hash()
        err = self.vset.verify_commit(self.chain_id, commit, self.height, block_hash, self.verify)
        if err is None:
            err = self._validity(block, block_hash, live=False)
        if err is not None:
            self._count("synced_block_rejected")
            return
        self._decide(block, block_hash, commit, delay_ms=0)

    def _on_timeout(self, t: TimeoutIn) -> None:
        if t.height != self.height:
            return
        if t.step == "commit":
            if self.round_step == COMMIT:
                self.height += 1
                self._enter_height()
            return
        if t.step == "wait":
            if self.round_step == WAIT:
                self._start_round(0)
                self._evaluate()
            return
        if t.step == "retry":
            # gossip is best effort: a round whose messages were lost must not
            # wait forever, so send own messages again and look for peers ahead
            if t.round == self.round and self.round_step != COMMIT:
                self._rebroadcast()
                self._maybe_sync(eager=True)
                self._emit(ScheduleTimeout(self.height, self.round, "retry", self._retry_ms()))
            return
        if t.step == "propose" and t.round == self.round and self.round_step == PROPOSE:
            self._vote(PREVOTE, b"")
            self.round_step = PREVOTE_STEP
        elif t.step == "prevote" and t.round == self.round and self.round_step == PREVOTE_STEP:
            self._vote(PRECOMMIT, b"")
            self.round_step = PRECOMMIT_STEP
        elif t.step == "precommit" and t.round == self.round and self.round_step != COMMIT:
            self._start_round(self.round + 1)
        self._maybe_sync()
        self._evaluate()

    def _retry_ms(self) -> int:
        return self.params.timeout_ms("propose", self.round) + self.params.timeout_ms("precommit", self.round)

    def _rebroadcast(self) -> None:
        """Own recent votes again: gossip is best effort, and peers that lost
        them need them to make progress."""
        for vote in self.h.own_votes[-REBROADCAST_VOTES:]:
            self._emit(Broadcast(vote))
        # the prevotes that justify our lock / valid value (the POL), which a
        # peer needs before it may prevote for that value in a later round
        for r, block in ((self.locked_round, self.locked_block), (self.valid_round, self.valid_block)):
            if r >= 0 and block is not None:
                bh = block.hash()
                for _, vote in sorted(self.h.by_hash.get((r, PREVOTE), {}).get(bh, {}).items()):
                    self._emit(Broadcast(vote))
        prop = self.h.proposals.get(self.round)
        if prop is not None and self.vset.proposer(self.height, self.round) == self.me:
            self._emit(Broadcast(wire.Proposal(self.height, self.round, prop[1], prop[0])))

    # ------------------------------------------------------------ validity
    def _validity(self, block: wire.Block, block_hash: bytes, live: bool = True) -> Optional[str]:
        cached = self.h.validity.get(block_hash, 0)
        if cached != 0:
            return cached
        err = self._check_block(block, live)
        self.h.validity[block_hash] = err
        if err is not None:
            self._count("invalid_block")
            self.last_invalid = err
        return err

    def _check_block(self, block: wire.Block, live: bool) -> Optional[str]:
        hdr = block.header
        if hdr.chain_id != self.chain_id:
            return "wrong chain_id"
        if hdr.height != self.height:
            return f"height {hdr.height} != {self.height}"
        if hdr.prev_hash != self.tip.block_hash:
            return "prev_hash does not link to the last block"
        if hdr.proposer not in self.vset:
            return "proposer is not a validator"
        if hdr.time_ms <= self.tip.time_ms:
            return "time not after the previous block"
        if live and hdr.time_ms > self._now + self.params.max_clock_drift_ms:
            return "time too far in the future"
        if len(block.txs) > self.params.max_block_txs:
            return "too many txs"
        if any(len(t) > self.params.max_tx_bytes for t in block.txs):
            return "oversize tx"
        if hdr.tx_root != tx_root(block.txs):
            return "tx_root mismatch"
        if hdr.last_commit_hash != commit_hash(block.last_commit):
            return "last_commit_hash mismatch"
        if self.height > 1:
            err = self.vset.verify_commit(self.chain_id, block.last_commit, self.height - 1,
                                          self.tip.block_hash, self.verify)
            if err:
                return f"last_commit: {err}"
        elif block.last_commit is not None:
            return "block 1 carries a last_commit"
        if hdr.state_hash != self.app.state_hash():
            return "state_hash mismatch"
        return self.app.validate_txs(self.height, block.txs)

    # ------------------------------------------------------------ the upon-rules
    def _evaluate(self) -> None:
        while self.round_step not in (WAIT, COMMIT) and self._rules_once():
            pass

    def _rules_once(self) -> bool:
        h, r, q = self.h, self.round, self.vset.quorum
        # L55: f+1 power seen in a higher round: skip to it
        higher = [rr for rr, senders in h.round_senders.items()
                  if rr > r and self.vset.power_of(senders) >= self.vset.third]
        if higher:
            self._start_round(max(higher))
            return True
        # L49: 2f+1 precommits for a block in any round: decide
        for (rr, vt), tally in list(h.tally.items()):
            if vt != PRECOMMIT:
                continue
            for bh, power in tally.items():
                if bh and power >= q:
                    block = h.blocks.get(bh)
                    if block is None:
                        if bh not in h.fetch_asked:
                            h.fetch_asked.add(bh)
                            voters = tuple(v for v in h.by_hash[(rr, PRECOMMIT)][bh] if v != self.me)
                            self._emit(RequestBlocks(self.height, self.height, voters))
                        continue
                    if self._validity(block, bh) is None:
                        self._decide(block, bh, self._make_commit(rr, bh))
                        return False
        self._late_polka()
        prop = h.proposals.get(r)
        if self.round_step == PROPOSE and prop is not None:
            block, pol, bh = prop
            if pol == -1:  # L22
                ok = self._validity(block, bh) is None and (self.locked_round == -1 or self._locked_hash() == bh)
                self._vote(PREVOTE, bh if ok else b"")
                self.round_step = PREVOTE_STEP
                return True
            if h.tally.get((pol, PREVOTE), {}).get(bh, 0) >= q:  # L28
                ok = self._validity(block, bh) is None and (self.locked_round <= pol or self._locked_hash() == bh)
                self._vote(PREVOTE, bh if ok else b"")
                self.round_step = PREVOTE_STEP
                return True
        if self.round_step >= PREVOTE_STEP:
            # L36: a proposal and 2f+1 prevotes for it in this round
            if ("l36", r) not in h.fired:
                for bh, power in h.tally.get((r, PREVOTE), {}).items():
                    block = h.blocks.get(bh)
                    if bh and power >= q and block is not None and self._validity(block, bh) is None:
                        h.fired.add(("l36", r))
                        if self.round_step == PREVOTE_STEP:
                            self.locked_round, self.locked_block = r, block
                            self._vote(PRECOMMIT, bh)
                            self.round_step = PRECOMMIT_STEP
                        self.valid_round, self.valid_block = r, block
                        return True
            if self.round_step == PREVOTE_STEP:
                if h.tally.get((r, PREVOTE), {}).get(b"", 0) >= q:  # L44
                    self._vote(PRECOMMIT, b"")
                    self.round_step = PRECOMMIT_STEP
                    return True
                if h.any_power.get((r, PREVOTE), 0) >= q and ("prevote_timeout", r) not in h.fired:  # L34
                    h.fired.add(("prevote_timeout", r))
                    self._emit(ScheduleTimeout(self.height, r, "prevote", self.params.timeout_ms("prevote", r)))
        if h.any_power.get((r, PRECOMMIT), 0) >= q and ("precommit_timeout", r) not in h.fired:  # L47
            h.fired.add(("precommit_timeout", r))
            self._emit(ScheduleTimeout(self.height, r, "precommit", self.params.timeout_ms("precommit", r)))
        return False

    def _late_polka(self) -> None:
        """2/3+ prevotes for a valid block in an earlier round than ours (seen
        late, or again after a restart) make it the valid value; L36 sees only
        the current round. Only proposing uses it, and every node checks the
        proof-of-lock itself, so this is safe; it is what lets nodes locked on
        that block prevote again once their locks' POLs arrived too late."""
        for (rr, vt), tally in self.h.tally.items():
            if vt == PREVOTE and self.valid_round < rr < self.round:
                for bh, power in tally.items():
                    block = self.h.blocks.get(bh)
                    if bh and power >= self.vset.quorum and block is not None and self._validity(block, bh) is None:
                        self.valid_round, self.valid_block = rr, block

    def _locked_hash(self) -> Optional[bytes]:
        return self.locked_block.hash() if self.locked_block is not None else None

    def _make_commit(self, round_: int, block_hash: bytes) -> wire.Commit:
        votes = self.h.by_hash[(round_, PRECOMMIT)][block_hash]
        sigs = tuple(wire.CommitSig(v, vote.signature) for v, vote in sorted(votes.items()))
        return wire.Commit(self.height, round_, block_hash, sigs)

    def _decide(self, block: wire.Block, block_hash: bytes, commit: wire.Commit,
                delay_ms: Optional[int] = None) -> None:
        self.round_step = COMMIT
        self.tip = Tip(self.height, block_hash, block.header.time_ms, commit)
        self._emit(CommitBlock(block, commit))
        delay = self.params.timeout_commit_ms if delay_ms is None else delay_ms
        self._emit(ScheduleTimeout(self.height, self.round, "commit", delay))
