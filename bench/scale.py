"""Cost of a node as the swarm grows, idle and per query (127.0.0.1 only, no models).

For each N, starts N real ``p2pnet node start`` processes (node 0 first, the
others bootstrapping from it, started a few at a time), lets them settle, then
reads every process's CPU time (utime + stime from /proc/PID/stat) at the
start and the end of a window with no queries and no API calls, and
afterwards each node's connection count (``/status``) and RSS. Prints one
Markdown table row per N: per-node CPU ms per second (mean, max),
connections (mean, max) and RSS (mean, MB).

With ``--query-rate R`` the even-numbered nodes host a scripted expert
(``--expert model=scripted:wrong``: a canned answer after 50 ms, no model)
and the odd-numbered ones none; after the idle window, R queries a second
(2 respondents each) go for ``--window-s`` to the odd nodes' APIs in turn, so
every query crosses the network. ``--domains K`` (default 1: every expert
serves "general") spreads the experts over K domains d0..d(K-1) (node 2j
serves d(j mod K)) and names the domain in each query, in turn: with
announcements sharded by domain, an expert's announcement reaches the
experts of its domain and the coordinators asking there. The second table: the swarm's CPU per query
above its idle rate (total and divided by N), each node's CPU per second
under load, and how many nodes a query reached (queries a node took, by
gossip or direct stream, over all nodes, per query).

``--compare DIR`` measures each N twice, first with the nodes running from
DIR ("before", e.g. ``git archive HEAD p2pnet cli testnet | tar -x -C DIR``),
then from this tree ("after"), one right after the other, and prints both.

Before the first N it waits (up to ``--quiet-wait-s``) for the machine's
1-minute load average to drop below ``--quiet-below``, before each later N up to
two minutes, and prints the load each N started at. ``--src DIR`` runs the nodes from another checkout (e.g. ``git archive
HEAD | tar -x -C /tmp/scale-base``) to compare before and after side by side.

    .venv/bin/python bench/scale.py [--nodes 5,10,20,40] [--settle-s 30] [--window-s 30] [--src DIR]
        [--query-rate 2] [--compare DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

CLI = "import sys; from p2pnet_cli.main import main; main(sys.argv[1:])"


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def wait_quiet(below: float, wait_s: float) -> tuple[float, bool]:
    """Wait until the 1-minute load is below ``below``; (load, quiet?)."""
    deadline = time.monotonic() + wait_s
    while load1() >= below and time.monotonic() < deadline:
        time.sleep(5)
    return load1(), load1() < below


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def runtime(data_dir: Path):
    try:
        return json.loads((data_dir / "node.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def get_status(api: str) -> dict:
    with urllib.request.urlopen(api + "/status", timeout=10) as resp:
        return json.loads(resp.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


QUESTION = "What is the capital of France?"


def ask(api: str, domain: str = "") -> bool:
    body = json.dumps({"model": "p2pnet", "messages": [{"role": "user", "content": QUESTION}],
                       "max_tokens": 8, "respondents": 2, "deadline_s": 20,
                       **({"domain": domain} if domain else {})}).encode()
    req = urllib.request.Request(api + "/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status == 200
    except Exception:
        return False


def queries_taken(st: dict) -> int:
    """Queries that reached this node: by gossip (any topic version) or the direct stream."""
    counters = st.get("counters", {})
    gossip = sum(n for topic, n in counters.get("received", {}).items() if topic.startswith("p2pnet/queries/"))
    return gossip + counters.get("direct", {}).get("query_in", 0)


def source_env(src) -> dict:
    """The environment for node processes: with ``src``, its packages first on
    the path (the venv's editable install maps p2pnet_cli to cli/)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("P2PNET_DEBUG", None)
    if src is None:
        return env
    src = Path(src).resolve()
    shim = Path(tempfile.mkdtemp(prefix="p2pnet-scale-src-"))
    for name, sub in (("p2pnet", "p2pnet"), ("p2pnet_cli", "cli"), ("p2pnet_testnet", "testnet")):
        if (src / sub).exists():
            (shim / name).symlink_to(src / sub)
    env["PYTHONPATH"] = str(shim)
    return env


class Swarm:
    def __init__(self, root: Path, env: dict, node_args, experts: bool = False, domains: int = 1) -> None:
        self.root = root
        self.env = env
        self.node_args = list(node_args)
        self.experts = experts  # even-numbered nodes host a scripted expert
        self.domains = domains
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[Path] = []

    def launch(self, i: int, bootstrap) -> None:
        d = self.root / f"node{i}"
        d.mkdir(parents=True)
        args = [sys.executable, "-c", CLI, "node", "start", "--data-dir", str(d), "--listen",
                "/ip4/127.0.0.1/tcp/0", "--api-port", "0", "--log-level", "warning", *self.hosting(i),
                *self.node_args]
        for b in bootstrap:
            args += ["--bootstrap", b]
        with open(d / "node.log", "wb") as log:
            # cwd: `python -c` puts it first on the path, before --src
            self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, cwd=d,
                                               stderr=subprocess.STDOUT, env=self.env))
        self.dirs.append(d)

    def hosting(self, i: int) -> list:
        if self.experts and i % 2 == 0:
            domain = "general" if self.domains <= 1 else f"d{(i // 2) % self.domains}"
            return ["--expert", f"model=scripted:wrong,id=x{i},domains={domain}"]
        return ["--no-experts"]

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(runtime(d) for d in self.dirs):
            for p, d in zip(self.procs, self.dirs):
                if p.poll() is not None:
                    raise SystemExit(f"node in {d} exited: {(d / 'node.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"nodes not ready after {timeout_s:.0f}s")
            time.sleep(0.2)

    def start(self, n: int, batch: int, timeout_s: float) -> None:
        self.launch(0, [])
        self.wait_ready(timeout_s)
        rt = runtime(self.dirs[0])
        boot = [f"{rt['listen'][0]}/p2p/{rt['peer_id']}" if "/p2p/" not in rt["listen"][0] else rt["listen"][0]]
        for i in range(1, n):
            self.launch(i, boot)
            if i % batch == 0 or i == n - 1:
                self.wait_ready(timeout_s)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def query_phase(sw: Swarm, args, pids, idle_rate) -> dict:
    """``args.query_rate`` queries a second for ``args.window_s`` to the odd nodes in turn."""
    apis = [runtime(d)["api"] for d in sw.dirs]
    coords = apis[1::2]
    n_experts = len(apis[0::2])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every coordinator knows every expert
        try:
            if all(get_json(a + "/v1/models")["data"][0].get("experts", 0) >= n_experts for a in coords):
                break
        except Exception:
            pass
        time.sleep(1)
    taken0 = sum(queries_taken(get_status(a)) for a in apis)
    total = int(args.query_rate * args.window_s)
    results = []
    threads = []
    t0, c0 = time.monotonic(), [cpu_s(pid) for pid in pids]
    for i in range(total):
        time.sleep(max(0.0, t0 + i / args.query_rate - time.monotonic()))
        domain = f"d{i % args.domains}" if args.domains > 1 else ""
        th = threading.Thread(target=lambda api=coords[i % len(coords)], d=domain: results.append(ask(api, d)),
                              daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(timeout=40)
    t1, c1 = time.monotonic(), [cpu_s(pid) for pid in pids]
    taken1 = sum(queries_taken(get_status(a)) for a in apis)
    per_node = [1000 * (b - a) / (t1 - t0) for a, b in zip(c0, c1)]
    extra_ms = 1000 * sum(b - a for a, b in zip(c0, c1)) - idle_rate * len(pids) * (t1 - t0)
    ok = sum(results)
    return {"queries": total, "ok": ok, "q_cpu_mean": statistics.mean(per_node), "q_cpu_max": max(per_node),
            "per_query_total_ms": extra_ms / max(ok, 1), "per_query_per_node_ms": extra_ms / max(ok, 1) / len(pids),
            "reached_per_query": (taken1 - taken0) / max(total, 1), "load_queries_end": load1()}


def measure(n: int, args, env, wait_s: float, label: str = "") -> dict:
    load_before, quiet = wait_quiet(args.quiet_below, wait_s)
    with tempfile.TemporaryDirectory(prefix=f"p2pnet-scale-{n}-") as tmp:
        sw = Swarm(Path(tmp), env, args.node_arg, experts=args.query_rate > 0, domains=args.domains)
        try:
            print(f"N={n} {label}: load {load_before:.2f}; starting ...", file=sys.stderr, flush=True)
            sw.start(n, args.batch, args.start_timeout_s)
            time.sleep(args.settle_s)
            pids = [p.pid for p in sw.procs]
            t0, c0 = time.monotonic(), [cpu_s(pid) for pid in pids]
            time.sleep(args.window_s)
            t1, c1 = time.monotonic(), [cpu_s(pid) for pid in pids]
            load_end = load1()
            cpu = [1000 * (b - a) / (t1 - t0) for a, b in zip(c0, c1)]
            rss = [rss_mb(pid) for pid in pids]
            conns = []
            for d in sw.dirs:
                st = get_status(runtime(d)["api"])
                conns.append(st.get("connections", {}).get("count", st.get("peer_count", 0)))
            q = query_phase(sw, args, pids, statistics.mean(cpu)) if args.query_rate > 0 else {}
            alive = sum(p.poll() is None for p in sw.procs)
        finally:
            sw.stop()
    row = {"n": n, "label": label, "cpu_mean": statistics.mean(cpu), "cpu_max": max(cpu),
           "conn_mean": statistics.mean(conns), "conn_max": max(conns), "conn_min": min(conns),
           "rss_mean": statistics.mean(rss), "load_before": load_before, "quiet": quiet, "load_end": load_end,
           "alive": alive, **q}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def print_tables(title: str, rows: list, args) -> None:
    print(f"\n{title}: node processes on 127.0.0.1, {os.cpu_count()} cores, "
          f"settle {args.settle_s:.0f} s, window {args.window_s:.0f} s, experts' domains {args.domains}\n")
    print("| N | idle CPU ms/s per node, mean | max | connections, mean | min–max | RSS MB, mean | load at start |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        quiet = "" if r["quiet"] else " (not quiet)"
        print(f"| {r['n']} | {r['cpu_mean']:.1f} | {r['cpu_max']:.1f} | {r['conn_mean']:.1f} | "
              f"{r['conn_min']}–{r['conn_max']} | {r['rss_mean']:.0f} | {r['load_before']:.2f}{quiet} |")
    if not any("queries" in r for r in rows):
        return
    print(f"\n{args.query_rate:g} queries/s for {args.window_s:.0f} s, 2 respondents each:\n")
    print("| N | answered | CPU ms per query, swarm total above idle | per node (÷N) | CPU ms/s per node "
          "under load, mean | max | nodes a query reached | load at end |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['ok']}/{r['queries']} | {r['per_query_total_ms']:.1f} | "
              f"{r['per_query_per_node_ms']:.2f} | {r['q_cpu_mean']:.1f} | {r['q_cpu_max']:.1f} | "
              f"{r['reached_per_query']:.1f} | {r['load_queries_end']:.2f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="5,10,20,40")
    ap.add_argument("--settle-s", type=float, default=30.0)
    ap.add_argument("--window-s", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=5, help="nodes started together")
    ap.add_argument("--start-timeout-s", type=float, default=300.0)
    ap.add_argument("--quiet-below", type=float, default=1.0)
    ap.add_argument("--quiet-wait-s", type=float, default=1200.0)
    ap.add_argument("--between-wait-s", type=float, default=120.0,
                    help="the most to wait for a quiet machine before each later swarm")
    ap.add_argument("--src", type=Path, default=None, help="run the nodes from this source tree")
    ap.add_argument("--node-arg", action="append", default=[], help="extra `node start` argument; repeatable")
    ap.add_argument("--label", default="")
    ap.add_argument("--query-rate", type=float, default=0.0, help="queries/s after the idle window; 0: idle only")
    ap.add_argument("--domains", type=int, default=1, help="the experts' domains (with --query-rate)")
    ap.add_argument("--compare", type=Path, default=None, help="also run each N from this tree first (before)")
    args = ap.parse_args(argv)
    # SIGTERM (as SIGINT) unwinds, so each swarm's finally stops the nodes it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    env = source_env(args.src)
    before_env = source_env(args.compare) if args.compare is not None else None
    for e in ([before_env] if before_env else []) + [env]:
        probe = subprocess.run([sys.executable, "-c", "import p2pnet; print(p2pnet.__file__)"], env=e, cwd="/",
                               capture_output=True, text=True, check=True).stdout.strip()
        print(f"nodes run p2pnet from {probe}", file=sys.stderr)
    # The whole wait before the first swarm; later ones only let the previous one's load decay.
    before, after = [], []
    for i, n in enumerate(args.nodes.split(",")):
        wait = args.quiet_wait_s if i == 0 else args.between_wait_s
        if before_env is not None:
            before.append(measure(int(n), args, before_env, wait, "before"))
            wait = args.between_wait_s
        after.append(measure(int(n), args, env, wait, "after" if before_env else ""))
    if before:
        print_tables(f"before ({args.compare})", before, args)
    print_tables(args.label or ("after" if before else "scale"), after, args)


if __name__ == "__main__":
    main()
