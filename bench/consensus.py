"""Consensus benchmark: commit latency and throughput of the Trio driver.

N validators in one process over an in-process network (memory calls, every
message sealed and verified with real Ed25519 signatures), each with a real
LMDB ledger in a temp dir (default sync). Run::

    python bench/consensus.py [--validators 4 7] [--txs 10000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time

import trio

from p2pnet import wire
from p2pnet.consensus.driver import ConsensusService
from p2pnet.consensus.genesis import Params, generate_genesis
from p2pnet.consensus.memnet import MemoryHub
from p2pnet.consensus.store import Ledger


def signer(tag: str, i: int) -> wire.Signer:
    return wire.Signer(hashlib.sha256(f"bench-{tag}-{i}".encode()).digest())


def make_txs(count: int, raters: int, respondents: int, start: int = 0):
    rs = [signer("rater", i) for i in range(raters)]
    resp = [signer("expert", i).peer_id for i in range(respondents)]
    out = []
    for k in range(start, start + count):
        r = wire.Rating(query_hash=hashlib.sha256(b"q%d" % k).digest(), respondent=resp[k % respondents],
                        expert_id="e", domain="code", answer_hash=hashlib.sha256(b"a%d" % k).digest(),
                        score=(k % 5) / 4)
        out.append((k % raters, rs[k % raters].seal(r)))
    return out


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def run(n: int, n_txs: int, tmp: str) -> dict:
    vals = [signer("validator", i) for i in range(n)]
    params = Params(timeout_commit_ms=0, create_empty_blocks_interval_ms=3_600_000, max_block_txs=500)
    genesis = generate_genesis([v.public_key for v in vals], chain_id="bench", params=params)
    hub = MemoryHub()
    commit_at: dict = {}
    blocks: list = []

    def on_commit(block, commit):
        now = time.perf_counter()
        blocks.append((now, len(block.txs)))
        for t in block.txs:
            commit_at[hashlib.sha256(t).digest()] = now

    raters = 200
    lat_txs = make_txs(300, raters, 20)
    tput_txs = make_txs(n_txs, raters, 20, start=300)
    ledgers = []
    services = []
    async with trio.open_nursery() as nursery:
        for i, v in enumerate(vals):
            led = Ledger.open(os.path.join(tmp, f"n{n}-{i}"), genesis=genesis)
            ledgers.append(led)
            svc = ConsensusService(led, v, genesis, net=hub.endpoint(v), on_commit=on_commit if i == 0 else None,
                                   outbox_size=100_000, inbox_size=100_000)
            hub.attach(v.peer_id, svc)
            services.append(svc)
        for svc in services:
            await nursery.start(svc.run)
        # latency: a steady trickle, ~100 tx/s
        submitted = {}
        for r, tx in lat_txs:
            submitted[hashlib.sha256(tx).digest()] = time.perf_counter()
            ok, reason = services[r % n].submit_tx(tx)
            assert ok, reason
            await trio.sleep(0.01)
        while not all(h in commit_at for h in submitted):
            await trio.sleep(0.01)
        lat = [(commit_at[h] - t) * 1000 for h, t in submitted.items()]
        rounds = max(s.replica.core.round for s in services)
        # throughput: submit as fast as the mempool takes them
        hashes = [hashlib.sha256(tx).digest() for _, tx in tput_txs]
        t0 = time.perf_counter()
        start_block = len(blocks)
        i = 0
        while i < len(tput_txs):
            r, tx = tput_txs[i]
            ok, reason = services[r % n].submit_tx(tx)
            if ok:
                i += 1
            if not ok or i % 100 == 0:
                await trio.sleep(0 if ok else 0.005)
        while not all(h in commit_at for h in hashes):
            await trio.sleep(0.005)
        elapsed = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    for led in ledgers:
        led.close()
    sizes = [k for _, k in blocks[start_block:]]
    return {"validators": n, "p50_ms": statistics.median(lat), "p95_ms": pct(lat, 95), "max_round": rounds,
            "tx_per_s": n_txs / elapsed, "blocks": len(sizes), "mean_block_txs": statistics.mean(sizes)}


def state_transition(blocks: int = 20, per_block: int = 500, raters: int = 200, respondents: int = 50,
                     repeats: int = 5) -> dict:
    """The reputation rule alone: apply ``blocks`` blocks of ratings (txs
    decoded once, as the mempool's cache has them) and hash the state after
    each; best of ``repeats``."""
    from p2pnet.consensus.reputation import apply_txs, decode_tx, genesis_state

    genesis = generate_genesis([signer("val", i).public_key for i in range(4)], chain_id="bench-rule",
                               genesis_time_ms=0)
    txs = [decode_tx(raw, genesis.params.max_tx_bytes)
           for _, raw in make_txs(blocks * per_block, raters, respondents)]
    chunks = []
    for b in range(blocks):  # a rater's txs keep their nonce order, at most 16 of them per block
        chunk = txs[b * per_block:(b + 1) * per_block]
        chunks.append(sorted(chunk, key=lambda tx: (tx.rater, tx.nonce)))
    best = float("inf")
    for _ in range(repeats):
        state, t0 = genesis_state(genesis), time.perf_counter()
        for h, chunk in enumerate(chunks, 1):
            state = apply_txs(state, h, chunk)
            state.hash()
        best = min(best, time.perf_counter() - t0)
    return {"blocks": blocks, "per_block": per_block, "us_per_tx": best / (blocks * per_block) * 1e6,
            "ms_per_block": best / blocks * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--validators", type=int, nargs="+", default=[4, 7])
    ap.add_argument("--txs", type=int, default=10_000)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.validators:
            rows.append(trio.run(run, n, args.txs, tmp))
    print(f"consensus benchmark, {os.cpu_count()} cores (nproc), one process, real signatures + LMDB")
    print(f"{'validators':>10} {'p50 ms':>8} {'p95 ms':>8} {'max round':>9} {'tx/s':>8} {'blocks':>7} {'txs/block':>9}")
    for r in rows:
        print(f"{r['validators']:>10} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} {r['max_round']:>9} "
              f"{r['tx_per_s']:>8.0f} {r['blocks']:>7} {r['mean_block_txs']:>9.1f}")
    st = state_transition()
    print(f"\nreputation rule alone (apply_txs + state hash, best of 5): {st['blocks']} blocks of "
          f"{st['per_block']} ratings, {st['us_per_tx']:.1f} us per rating, {st['ms_per_block']:.2f} ms per block")


if __name__ == "__main__":
    main()
