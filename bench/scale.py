"""Idle cost of a node as the swarm grows (127.0.0.1 only, no models).

For each N, starts N real ``p2pnet node start --no-experts`` processes (node 0
first, the others bootstrapping from it, started a few at a time), lets them
settle, then reads every process's CPU time (utime + stime from
/proc/PID/stat) at the start and the end of a window with no queries and no
API calls, and afterwards each node's connection count (``/status``) and RSS.
Prints one Markdown table row per N: per-node CPU ms per second (mean, max),
connections (mean, max) and RSS (mean, MB).

Before the first N it waits (up to ``--quiet-wait-s``) for the machine's
1-minute load average to drop below ``--quiet-below``, before each later N up to
two minutes, and prints the load each N started at. ``--src DIR`` runs the nodes from another checkout (e.g. ``git archive
HEAD | tar -x -C /tmp/scale-base``) to compare before and after side by side.

    .venv/bin/python bench/scale.py [--nodes 5,10,20,40] [--settle-s 30] [--window-s 30] [--src DIR]
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
    def __init__(self, root: Path, env: dict, node_args) -> None:
        self.root = root
        self.env = env
        self.node_args = list(node_args)
        self.procs: list[subprocess.Popen] = []
        self.dirs: list[Path] = []

    def launch(self, i: int, bootstrap) -> None:
        d = self.root / f"node{i}"
        d.mkdir(parents=True)
        args = [sys.executable, "-c", CLI, "node", "start", "--data-dir", str(d), "--listen",
                "/ip4/127.0.0.1/tcp/0", "--api-port", "0", "--no-experts", "--log-level", "warning",
                *self.node_args]
        for b in bootstrap:
            args += ["--bootstrap", b]
        with open(d / "node.log", "wb") as log:
            # cwd: `python -c` puts it first on the path, before --src
            self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, cwd=d,
                                               stderr=subprocess.STDOUT, env=self.env))
        self.dirs.append(d)

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


def measure(n: int, args, env, wait_s: float) -> dict:
    load_before, quiet = wait_quiet(args.quiet_below, wait_s)
    with tempfile.TemporaryDirectory(prefix=f"p2pnet-scale-{n}-") as tmp:
        sw = Swarm(Path(tmp), env, args.node_arg)
        try:
            print(f"N={n}: load {load_before:.2f}; starting ...", file=sys.stderr, flush=True)
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
            alive = sum(p.poll() is None for p in sw.procs)
        finally:
            sw.stop()
    row = {"n": n, "cpu_mean": statistics.mean(cpu), "cpu_max": max(cpu), "conn_mean": statistics.mean(conns),
           "conn_max": max(conns), "conn_min": min(conns), "rss_mean": statistics.mean(rss),
           "load_before": load_before, "quiet": quiet, "load_end": load_end, "alive": alive}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="5,10,20,40")
    ap.add_argument("--settle-s", type=float, default=30.0)
    ap.add_argument("--window-s", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=5, help="nodes started together")
    ap.add_argument("--start-timeout-s", type=float, default=300.0)
    ap.add_argument("--quiet-below", type=float, default=1.0)
    ap.add_argument("--quiet-wait-s", type=float, default=1200.0)
    ap.add_argument("--src", type=Path, default=None, help="run the nodes from this source tree")
    ap.add_argument("--node-arg", action="append", default=[], help="extra `node start` argument; repeatable")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    env = source_env(args.src)
    probe = subprocess.run([sys.executable, "-c", "import p2pnet; print(p2pnet.__file__)"], env=env, cwd="/",
                           capture_output=True, text=True, check=True).stdout.strip()
    print(f"nodes run p2pnet from {probe}", file=sys.stderr)
    # The whole wait before the first N; later ones only let the previous N's load decay.
    rows = [measure(int(n), args, env, args.quiet_wait_s if i == 0 else 120.0)
            for i, n in enumerate(args.nodes.split(","))]
    print(f"\n{args.label or 'scale'}: idle node processes on 127.0.0.1, {os.cpu_count()} cores, "
          f"settle {args.settle_s:.0f} s, window {args.window_s:.0f} s, no queries\n")
    print("| N | CPU ms/s per node, mean | max | connections, mean | min–max | RSS MB, mean | load at start |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        quiet = "" if r["quiet"] else " (not quiet)"
        print(f"| {r['n']} | {r['cpu_mean']:.1f} | {r['cpu_max']:.1f} | {r['conn_mean']:.1f} | "
              f"{r['conn_min']}–{r['conn_max']} | {r['rss_mean']:.0f} | {r['load_before']:.2f}{quiet} |")


if __name__ == "__main__":
    main()
