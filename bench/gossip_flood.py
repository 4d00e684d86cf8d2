"""How much memory does a flood of valid gossip messages cost a node?

py-libp2p 0.8.1 starts a task per received message without limit (trap 7);
p2pnet bounds the messages handled at once (``GossipParams.max_inflight``) and
stops reading a stream past it. This starts a node in a child process (one
per setting), floods it from a hostile peer with ``--messages`` valid, signed
broadcasts in RPCs of ``--per-rpc``, sent as fast as TCP takes them, and prints
the node's peak RSS, the time to take them all, and the messages delivered.

    .venv/bin/python bench/gossip_flood.py [--messages 10000] [--per-rpc 50]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import os, sys, trio
from p2pnet import wire
from p2pnet.gossip import topics
from p2pnet.gossip.host import GossipParams
from p2pnet.gossip.network import GossipNetwork
from p2pnet.identity import Identity

async def main():
    ident = Identity(os.urandom(32))
    net = GossipNetwork(ident, ident.signer(), ["/ip4/127.0.0.1/tcp/0"], [],
                        params=GossipParams(max_inflight=int(sys.argv[1])), inbox_size=100_000)
    got = [0]
    async def take(env):
        got[0] += 1
    net.on(topics.BROADCAST, take)
    async with trio.open_nursery() as n:
        await n.start(net.run)
        addr = net.listen_addrs[0]
        if "/p2p/" not in addr:
            addr += "/p2p/" + wire.peer_id_str(net.peer_id)
        print(addr, flush=True)
        last = -1
        while True:
            await trio.sleep(0.2)
            if got[0] != last:
                print("got", got[0], flush=True)
                last = got[0]
trio.run(main)
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def flood(addr: str, messages: int, per_rpc: int, done) -> float:
    """Send the flood; stay connected until ``done()``; return seconds to send."""
    from p2pnet import wire
    from p2pnet.gossip import topics
    from tests.hostile import HostilePeer, frame, rpc_bytes

    async with trio.open_nursery() as nursery:
        h = HostilePeer()
        await nursery.start(h.run)
        node = await h.connect(addr)
        t0 = trio.current_time()
        sent = 0
        while sent < messages:
            n = min(per_rpc, messages - sent)
            msgs = [h.gossip(topics.BROADCAST, h.envelope(wire.Broadcast(f"m{sent + i}"))) for i in range(n)]
            await h.send(node, frame(rpc_bytes(*msgs)))
            sent += n
        sent_s = trio.current_time() - t0
        # stay connected until the node has taken everything: closing now would
        # reset the connection with the unread rest of the flood in it
        with trio.move_on_after(600):
            while not done():
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    return sent_s


def run_one(max_inflight: int, messages: int, per_rpc: int) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(max_inflight)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        addr = proc.stdout.readline().strip()
        base = rss_mb(proc.pid)
        peak = [base]
        got = [0]
        done = [False]

        def watch():
            for line in proc.stdout:
                if line.startswith("got"):
                    got[0] = int(line.split()[1])
                    if got[0] >= messages:
                        break
            done[0] = True

        import threading

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        sampler_stop = threading.Event()

        def sample():
            while not sampler_stop.is_set():
                peak[0] = max(peak[0], rss_mb(proc.pid))
                time.sleep(0.05)

        s = threading.Thread(target=sample, daemon=True)
        s.start()
        t0 = time.monotonic()
        sent_s = trio.run(flood, addr, messages, per_rpc, lambda: done[0])
        total_s = time.monotonic() - t0
        sampler_stop.set()
        s.join()
        return {"base": base, "peak": peak[0], "sent_s": sent_s, "total_s": total_s, "got": got[0]}
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--per-rpc", type=int, default=50)
    ap.add_argument("--settings", default="256,1000000", help="max_inflight values, comma-separated")
    args = ap.parse_args()
    print(f"{args.messages} valid broadcasts in RPCs of {args.per_rpc}, one hostile peer, {os.cpu_count()} cores")
    print(f"{'max_inflight':>12} {'RSS before MB':>13} {'peak MB':>8} {'+MB':>6} {'sent in s':>9} {'handled in s':>12} {'delivered':>9}")
    for setting in (int(x) for x in args.settings.split(",")):
        r = run_one(setting, args.messages, args.per_rpc)
        print(f"{setting:>12} {r['base']:>13.0f} {r['peak']:>8.0f} {r['peak'] - r['base']:>6.0f} "
              f"{r['sent_s']:>9.1f} {r['total_s']:>12.1f} {r['got']:>9}")


if __name__ == "__main__":
    main()
