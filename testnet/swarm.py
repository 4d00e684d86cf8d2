"""A local multi-process swarm on 127.0.0.1.

``up`` starts N ``p2pnet node start`` processes, each with its own data dir and
log file. Node 0 starts first; the others bootstrap from it. Peer exchange
turns that star into a mesh, and ``up`` returns once every node reports N-1
peers, or as many as its low watermark (``conn_low``) in a larger swarm. ``swarm.json`` in the swarm dir records exactly the processes that
were started, so ``down`` stops those and no others.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from p2pnet.errors import P2PNetError
from p2pnet.files import write_json_atomic

STATE_FILE = "swarm.json"


class SwarmError(P2PNetError):
    """The swarm could not be started, read or stopped."""


@dataclass
class SwarmNode:
    index: int
    data_dir: Path
    pid: int
    log: Path
    args: tuple = ()

    def as_json(self) -> dict:
        return {"index": self.index, "data_dir": str(self.data_dir), "pid": self.pid, "log": str(self.log),
                "args": list(self.args)}


def _runtime(data_dir: Path) -> Optional[dict]:
    from p2pnet.node import read_runtime

    return read_runtime(data_dir)


def _alive(pid: int, data_dir: Optional[Path] = None) -> bool:
    """True if ``pid`` runs and (when known) is the node of ``data_dir``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().split(") ")[-1].startswith("Z"):
                return False  # a zombie of ours that nobody reaped yet
        if data_dir is not None:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return str(data_dir).encode() in fh.read()
    except OSError:
        pass
    return True


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def load_state(swarm_dir: Path) -> list[SwarmNode]:
    path = Path(swarm_dir) / STATE_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise SwarmError(f"no swarm in {swarm_dir} (start one with `p2pnet swarm up`)") from None
    except ValueError as exc:
        raise SwarmError(f"{path} is corrupt: {exc}") from None
    return [SwarmNode(n["index"], Path(n["data_dir"]), n["pid"], Path(n["log"]), tuple(n.get("args", ())))
            for n in raw["nodes"]]


def _extra_state(swarm_dir: Path) -> dict:
    raw = json.loads((Path(swarm_dir) / STATE_FILE).read_text())
    return {k: v for k, v in raw.items() if k != "nodes"}


def _launch(args: Sequence[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _save_state(swarm_dir: Path, nodes: list[SwarmNode], extra: dict) -> None:
    write_json_atomic(Path(swarm_dir) / STATE_FILE, {"nodes": [n.as_json() for n in nodes], **extra})


def _wait(cond: Callable[[], bool], timeout_s: float, what: str, check: Callable[[], None] = lambda: None) -> None:
    """Poll ``cond`` until true, with a deadline; ``check`` raises on a fatal state."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while not cond():
        check()
        if time.monotonic() > deadline:
            raise SwarmError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _node_status(data_dir: Path) -> Optional[dict]:
    from p2pnet.api import client

    rt = _runtime(data_dir)
    if not rt or not rt.get("api"):
        return None
    try:
        return client.get_json(rt["api"] + "/status", timeout=5)
    except P2PNetError:
        return None


def prepare_genesis(swarm_dir: Path, dirs: Sequence[Path], keys: Sequence[bytes],
                    progress: Callable[[str], None] = lambda msg: None) -> Path:
    """The swarm's genesis file for validators ``keys``. The one already there
    is kept if it names the same validators, so the chain and the nodes'
    ledgers carry on across `swarm down` and `swarm up`; otherwise a new chain
    starts. A node's ledger of any other chain (a node refuses to start on
    one) is moved aside, never deleted."""
    from p2pnet.consensus.genesis import GenesisError, generate_genesis, load_genesis

    path = swarm_dir / "genesis.json"
    try:
        old = load_genesis(path) if path.exists() else None
    except GenesisError:
        old = None
    keep = old is not None and sorted(bytes(v.pub_key) for v in old.validators) == sorted(map(bytes, keys))
    genesis = old if keep else generate_genesis(keys, chain_id=f"p2pnet-local-{time.time_ns() // 1_000_000}")
    for d in dirs:
        ledger = d / "ledger"
        if not (ledger / "data.mdb").exists():
            continue
        chain = _ledger_genesis(ledger)
        if chain is not None and chain.hash() == genesis.hash():
            continue
        name = f"ledger.{chain.chain_id if chain is not None else 'unreadable'}"
        aside, n = d / name, 1
        while aside.exists():
            aside, n = d / f"{name}~{n}", n + 1
        ledger.rename(aside)
        if chain is not None:
            progress(f"moved the ledger of another chain aside: {aside}")
        else:  # another release's format (docs/reputation.md), or damaged: the chain starts afresh
            progress(f"moved aside a ledger this release cannot read (another release's format, or damaged): {aside}")
    if keep:
        progress(f"keeping {path} (chain {genesis.chain_id}, {len(keys)} validators): the ledgers carry on")
    else:
        path.write_text(genesis.to_json())
        progress(f"wrote {path} with {len(keys)} validators")
    return path


def _ledger_genesis(path: Path):
    """The genesis a ledger was made for; None if it cannot be read."""
    from p2pnet.consensus.errors import LedgerError
    from p2pnet.consensus.store import Ledger

    try:
        with Ledger.open(path, readonly=True) as led:
            return led.genesis
    except LedgerError:
        return None


SPECIALISTS = ("chemistry", "geography", "general", "units")
"""What the nodes of a swarm host by default, in turn: a knowledge expert per
shipped domain and a bare generalist ("general")."""


def expert_layout(n: int) -> list[str]:
    """The default expert of each of ``n`` nodes: SPECIALISTS in turn, the
    last node a generalist when the turn would leave none (questions no
    domain knows go to the generalists)."""
    kinds = [SPECIALISTS[i % len(SPECIALISTS)] for i in range(n)]
    if kinds and "general" not in kinds:
        kinds[-1] = "general"
    return kinds


def expert_spec(kind: str, model: Optional[str] = None) -> str:
    """The --expert spec of a ``kind`` of expert on ``model`` (default: the
    default model): a bare generalist, or a knowledge expert with the
    shipped knowledge base of its domain."""
    from p2pnet.experts import knowledge_build, modelstore

    model = model or modelstore.DEFAULT_MODEL
    if kind == "general":
        return f"model={model}"
    try:
        path = knowledge_build.shipped_passages(kind)
    except ValueError as exc:
        raise SwarmError(str(exc)) from None
    if "," in str(path):
        raise SwarmError(f"the {kind} knowledge base's path {path} holds a comma, which an expert spec cannot "
                         "carry; install p2pnet elsewhere or give --expert")
    return f"model={model},domains={kind},id={kind},knowledge={path}"


def default_expert_args(n: int) -> dict[int, tuple[str, ...]]:
    """``extra_args`` for ``up``: each node's default expert (expert_layout)."""
    return {i: ("--expert", expert_spec(kind)) for i, kind in enumerate(expert_layout(n))}


def up(
    n: int,
    swarm_dir: Path,
    *,
    validators: int = 0,
    node_args: Sequence[str] = (),
    extra_args: Optional[dict] = None,
    model_store: Optional[Path] = None,
    probe_interval_s: Optional[float] = None,
    timeout_s: float = 120.0,
    progress: Callable[[str], None] = lambda msg: None,
) -> list[dict]:
    """Start the swarm and wait for the mesh; returns ``status()``.

    ``node_args`` go to every node, ``extra_args[i]`` to node i only;
    ``probe_interval_s``: the validators' probe interval (their default,
    signals.DEFAULT_PROBE_INTERVAL_S, when None)."""
    if n < 1:
        raise SwarmError("a swarm needs at least one node")
    if not 0 <= validators <= n:
        raise SwarmError(f"--validators must be between 0 and {n}")
    swarm_dir = Path(swarm_dir).resolve()
    if (swarm_dir / STATE_FILE).exists():
        if any(_alive(node.pid, node.data_dir) for node in load_state(swarm_dir)):
            raise SwarmError(f"a swarm is already running in {swarm_dir} (stop it with `p2pnet swarm down`)")
    swarm_dir.mkdir(parents=True, exist_ok=True)

    from p2pnet.identity import load_or_create

    dirs = [swarm_dir / f"node{i}" for i in range(n)]
    identities = [load_or_create(d) for d in dirs]
    for d in dirs:
        (d / "node.json").unlink(missing_ok=True)
    genesis_path = None
    if validators:
        genesis_path = prepare_genesis(swarm_dir, dirs, [ident.public_key for ident in identities[:validators]],
                                       progress)

    nodes: list[SwarmNode] = []
    extra = {"validators": validators, "genesis": str(genesis_path) if genesis_path else None}
    try:
        bootstrap: list[str] = []
        for i, d in enumerate(dirs):
            args = [sys.executable, "-m", "p2pnet_cli", "node", "start", "--data-dir", str(d),
                    "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0", *node_args,
                    *(extra_args or {}).get(i, ())]
            if model_store is not None:
                args += ["--model-store", str(model_store)]
            for b in bootstrap:
                args += ["--bootstrap", b]
            if genesis_path is not None:
                args += ["--genesis", str(genesis_path)]
                if i < validators:
                    args.append("--validator")
                    if probe_interval_s is not None:
                        args += ["--probe-interval", str(probe_interval_s)]
            log_path = d / "node.log"
            proc = _launch(args, log_path)
            node = SwarmNode(i, d, proc.pid, log_path, tuple(args))
            nodes.append(node)
            _save_state(swarm_dir, nodes, extra)

            def died(node=node, proc=proc) -> None:
                if proc.poll() is not None:
                    raise SwarmError(f"node {node.index} exited (code {proc.returncode}); "
                                     f"last lines of {node.log}:\n{_log_tail(node.log)}")

            if i == 0:
                _wait(lambda: _node_status(d) is not None, timeout_s, "node 0 to start", died)
                rt = _runtime(d)
                bootstrap = [a if "/p2p/" in a else f"{a}/p2p/{rt['peer_id']}" for a in rt["listen"][:1]]
            progress(f"started node {i} (pid {proc.pid}) {identities[i].peer_id_str}")
        for node in nodes:
            _wait(lambda node=node: _node_status(node.data_dir) is not None, timeout_s,
                  f"node {node.index} to start", _check_alive(node))
        progress(f"waiting for the mesh of {n} nodes")
        _wait(lambda: all(_meshed(_node_status(node.data_dir), n) for node in nodes),
              timeout_s, f"every node to see {n - 1} peers and join every topic's mesh", _check_all_alive(nodes))
        # ready to answer: every node's directory holds every expert the swarm hosts
        statuses = [_node_status(node.data_dir) or {} for node in nodes]
        hosted = sum(len(st.get("experts") or ()) for st in statuses)
        if hosted:
            progress(f"waiting for every node to know the swarm's {hosted} experts")
            def knows_all(st: Optional[dict]) -> bool:  # its own experts join its directory on first use
                st = st or {}
                return st.get("known_experts", 0) >= hosted - len(st.get("experts") or ())

            _wait(lambda: all(knows_all(_node_status(node.data_dir)) for node in nodes),
                  timeout_s, f"every node to know the swarm's {hosted} experts", _check_all_alive(nodes))
    except BaseException:
        down(swarm_dir, quiet=True)
        raise
    return status(swarm_dir)


def _meshed(st: Optional[dict], n: int) -> bool:
    """Connected to all n-1 others, or to as many as its low watermark, and in
    a GossipSub mesh on every topic."""
    low = (st or {}).get("connections", {}).get("low", n - 1)
    if not st or st.get("peer_count", -1) < min(n - 1, low):
        return False
    from p2pnet.gossip.host import GossipParams

    want = min(n - 1, GossipParams().degree_low)
    topics = st.get("topics", {})
    return len(topics) > 0 and all(size >= want for size in topics.values())


def _check_alive(node: SwarmNode) -> Callable[[], None]:
    def check() -> None:
        if not _alive(node.pid):
            raise SwarmError(f"node {node.index} (pid {node.pid}) died; last lines of {node.log}:\n{_log_tail(node.log)}")
    return check


def _check_all_alive(nodes: list[SwarmNode]) -> Callable[[], None]:
    def check() -> None:
        for node in nodes:
            _check_alive(node)()
    return check


def status(swarm_dir: Path) -> list[dict]:
    out = []
    for node in load_state(Path(swarm_dir)):
        rt = _runtime(node.data_dir) or {}
        st = _node_status(node.data_dir) if _alive(node.pid, node.data_dir) else None
        out.append({
            "index": node.index,
            "peer_id": rt.get("peer_id") or (st or {}).get("peer_id"),
            "api": rt.get("api"),
            "pid": node.pid,
            "alive": st is not None,
            "data_dir": str(node.data_dir),
            "log": str(node.log),
            "peers": (st or {}).get("peers", []),
            "height": (st or {}).get("height"),
        })
    return out


def down(swarm_dir: Path, *, timeout_s: float = 15.0, quiet: bool = False) -> list[int]:
    """SIGTERM the swarm's processes (SIGKILL after ``timeout_s``); returns the pids stopped."""
    swarm_dir = Path(swarm_dir).resolve()
    try:
        nodes = load_state(swarm_dir)
    except SwarmError:
        if quiet:
            return []
        raise
    running = [node for node in nodes if _alive(node.pid, node.data_dir)]
    for node in running:
        try:
            os.kill(node.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(node.pid, node.data_dir) for node in running):
        _reap()
        time.sleep(0.05)
    for node in running:
        if _alive(node.pid, node.data_dir):
            try:
                os.kill(node.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _reap()
    (swarm_dir / STATE_FILE).unlink(missing_ok=True)
    return [node.pid for node in running]


def kill_node(swarm_dir: Path, index: int, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` to one node of the swarm (tests use SIGKILL)."""
    for node in load_state(Path(swarm_dir)):
        if node.index == index and _alive(node.pid, node.data_dir):
            os.kill(node.pid, sig)
            return node.pid
    raise SwarmError(f"no running node {index} in {swarm_dir}")


def restart_node(swarm_dir: Path, index: int, timeout_s: float = 120.0) -> int:
    """Start a stopped node of the swarm again with the same arguments; waits
    until its API answers and returns its new pid."""
    swarm_dir = Path(swarm_dir).resolve()
    nodes = load_state(swarm_dir)
    node = next((n for n in nodes if n.index == index), None)
    if node is None:
        raise SwarmError(f"no node {index} in {swarm_dir}")
    if _alive(node.pid, node.data_dir):
        raise SwarmError(f"node {index} is still running (pid {node.pid})")
    _reap()
    (node.data_dir / "node.json").unlink(missing_ok=True)
    proc = _launch(node.args, node.log)
    node.pid = proc.pid
    _save_state(swarm_dir, nodes, _extra_state(swarm_dir))
    _wait(lambda: _node_status(node.data_dir) is not None, timeout_s, f"node {index} to restart", _check_alive(node))
    return proc.pid


def _reap() -> None:
    """Collect exited children started by this process (no zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
