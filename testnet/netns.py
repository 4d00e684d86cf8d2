"""A multi-host testnet on Linux network namespaces (needs root).

Topology (``plan``): an "internet" namespace holds one bridge. Each server is
a namespace on that bridge with an address from 198.18.0.0/15 (reserved for
network tests; here it plays the public internet). Each laptop is a namespace
on its own private LAN (192.168.K.0/24) behind a home-router namespace that
sits on the bridge and masquerades with nftables: endpoint-independent mapping
(Linux keeps the source port) or, for a symmetric NAT, a random port for every
connection (``masquerade fully-random``). Unsolicited packets from the
internet never reach a laptop. Nothing links any namespace to the machine's
own network, so no packet can leave the machine.

Every node is a ``p2pnet node start`` process run inside its host's namespace
(``ip netns exec``), listening on the host's own address, port 4001, with its
API on 127.0.0.1:8700 of that namespace. With a ledger (``validators`` > 0)
the testnet writes its own network spec, ``network.json`` (p2pnet.netspec:
its genesis, every server as a bootstrap peer), and every node joins with
``--network``; without one, servers bootstrap from the first server and
laptops from a server's public address, through their NAT.

``testnet.json`` in the testnet's directory records everything made (the
namespaces, before each is created; the node processes), and every name
starts with a prefix derived from the directory, so ``down``, a failed ``up``
and an ``up`` after a crash remove exactly what was made. Deleting a
namespace deletes its veths, bridge, qdiscs and nftables tables with it.

The harness talks to a node's API from inside its namespace: a worker thread
enters the namespace with setns(2) and opens the socket there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from p2pnet.errors import P2PNetError
from p2pnet.files import write_json_atomic
from p2pnet_testnet import faults as faults_mod
from p2pnet_testnet.faults import Faults
from p2pnet_testnet.nsexec import API_PORT, API_URL, api_get
from p2pnet_testnet.swarm import SwarmError, _alive, _launch, _log_tail, _reap, _wait, prepare_genesis

STATE_FILE = "testnet.json"
P2P_PORT = 4001
NAT_TABLE = "p2ptn_nat"
NOT_ROOT_ENV = "P2PNET_TESTNET_NOT_ROOT"  # set: behave as if not root (tests of the error)
FAIL_AT_ENV = "P2PNET_TESTNET_FAIL_AT"  # "network" or "nodes": fail `up` there (tests of cleanup)
MAX_HOSTS = 200


class NetnsError(SwarmError):
    """The namespace testnet could not be started, read, changed or stopped."""


# ---------------------------------------------------------------- commands

def require_root() -> None:
    """One clear error unless this runs as root with ip, nft and tc at hand."""
    if os.environ.get(NOT_ROOT_ENV) or os.geteuid() != 0:
        raise NetnsError("p2pnet testnet needs root: it creates network namespaces "
                         "(run it as root or with sudo)")
    missing = [tool for tool in ("ip", "nft", "tc") if _which(tool) is None]
    if missing:
        raise NetnsError(f"p2pnet testnet needs {', '.join(missing)}: install iproute2 and nftables "
                         "(`bash scripts/bootstrap.sh dev` does)")


def _which(tool: str) -> Optional[str]:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


def _run(*argv: str, input: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
    argv = (_which(argv[0]) or argv[0], *argv[1:])
    out = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        first = (out.stderr or out.stdout).strip().splitlines()
        raise NetnsError(f"`{' '.join(argv[:8])}` failed: {first[0] if first else f'exit {out.returncode}'}")
    return out


def _nft(netns: str, script: str) -> None:
    _run("ip", "netns", "exec", netns, "nft", "-f", "-", input=script)


def _node_status(host: dict) -> Optional[dict]:
    try:
        return api_get(host["netns"], "/status", timeout=5)
    except (P2PNetError, OSError):
        return None


def _experts_hosted(args: list[str]) -> int:
    """How many experts a node started with ``args`` hosts, as far as its
    flags say: its ``--expert`` specs, none with ``--no-experts``, else the
    default model; 0 (nothing to wait for) when a ``--config`` decides."""
    if "--no-experts" in args:
        return 0
    return args.count("--expert") or (0 if "--config" in args else 1)


def _experts_known(host: dict) -> int:
    """How many experts the host's node knows (its own included), 0 while unknown."""
    try:
        return int(api_get(host["netns"], "/v1/models", timeout=5)["data"][0].get("experts", 0))
    except (P2PNetError, OSError, KeyError, IndexError, TypeError, ValueError):
        return 0


# ---------------------------------------------------------------- plan and state

def prefix_for(tdir: Path) -> str:
    """The prefix of every name a testnet in ``tdir`` makes."""
    return "p2ptn" + hashlib.sha1(str(Path(tdir).resolve()).encode()).hexdigest()[:6]


def plan(n: int, nat: int, symmetric: int, prefix: str, tdir: Path) -> list[dict]:
    """The hosts of a testnet: ``n - nat`` servers, then ``nat`` laptops of
    which the first ``symmetric`` sit behind symmetric NATs."""
    if not 1 <= n <= MAX_HOSTS:
        raise NetnsError(f"--hosts must be between 1 and {MAX_HOSTS}")
    if not 0 <= nat < n:
        raise NetnsError(f"--nat {nat}: a testnet needs at least one server, so at most {n - 1} laptops")
    if not 0 <= symmetric <= nat:
        raise NetnsError(f"--symmetric-nat {symmetric} is more than --nat {nat}: "
                         "symmetric NATs are some of the NATed laptops")
    hosts = []
    for i in range(n - nat):
        name = f"server{i}"
        addr = f"198.18.0.{i + 1}"
        hosts.append({"name": name, "role": "server", "netns": f"{prefix}-{name}", "addr": addr,
                      "public_addr": addr, "nat": None, "router": None, "edge_dev": "eth0",
                      "uplink": f"s{i}"})
    for k in range(nat):
        name = f"laptop{k}"
        hosts.append({"name": name, "role": "laptop", "netns": f"{prefix}-{name}", "addr": f"192.168.{k + 1}.2",
                      "public_addr": f"198.18.1.{k + 1}", "lan_gw": f"192.168.{k + 1}.1",
                      "nat": "symmetric" if k < symmetric else "endpoint-independent",
                      "router": f"{prefix}-router{k}", "edge_dev": "wan", "uplink": f"l{k}"})
    for h in hosts:
        d = Path(tdir) / h["name"]
        h.update(data_dir=str(d), log=str(d / "node.log"), pid=None, args=[], peer_id=None)
    return hosts


def load_state(tdir: Path) -> dict:
    path = Path(tdir) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NetnsError(f"no testnet in {tdir} (start one with `p2pnet testnet up --dir {tdir}`)") from None
    except ValueError as exc:
        raise NetnsError(f"{path} is corrupt: {exc}") from None


def _save(state: dict) -> None:
    write_json_atomic(Path(state["dir"]) / STATE_FILE, state)


def _host(state: dict, name: str) -> dict:
    for h in state["hosts"]:
        if h["name"] == name:
            return h
    raise NetnsError(f"no host {name!r} in this testnet (hosts: {', '.join(h['name'] for h in state['hosts'])})")


def _edge_netns(h: dict) -> str:
    return h["router"] or h["netns"]


def our_namespaces(prefix: str) -> list[str]:
    """Namespaces on this machine whose names carry ``prefix``."""
    out = _run("ip", "netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [name for name in names if name.startswith(prefix + "-")]


# ---------------------------------------------------------------- up

def up(n: int, tdir: Path, *, nat: int = 0, symmetric: int = 0, loss: float = 0.0,
       bandwidth: Optional[str] = None, validators: Optional[int] = None,
       experts: Optional[Sequence[str]] = None, host_experts: Optional[dict] = None,
       node_args: Sequence[str] = (), model_store: Optional[Path] = None, timeout_s: float = 180.0,
       progress: Callable[[str], None] = lambda msg: None, fail_at: Optional[str] = None,
       genesis_params: Optional[dict] = None) -> dict:
    """Build the network, start a node on every host, wait until the servers
    see each other and every laptop sees its bootstrap server; returns ``status()``.

    ``experts``: specs every node hosts (None: the default model; empty: none);
    ``host_experts[name]`` replaces them on one host. The first ``validators``
    servers (default: up to 4) keep the ledger; ``genesis_params`` changes
    chain parameters of its genesis (e.g. ``create_empty_blocks_interval_ms``)."""
    require_root()
    tdir = Path(tdir).resolve()
    prefix = prefix_for(tdir)
    hosts = plan(n, nat, symmetric, prefix, tdir)
    servers = [h for h in hosts if h["role"] == "server"]
    validators = min(len(servers), 4) if validators is None else validators
    if not 0 <= validators <= len(servers):
        raise NetnsError(f"--validators must be between 0 and the {len(servers)} servers")
    faults = Faults()
    faults.set_loss(loss)
    if bandwidth:
        faults_mod.parse_rate(bandwidth)
        faults.bandwidth = {h["name"]: bandwidth for h in hosts}
    unknown = set(host_experts or {}) - {h["name"] for h in hosts}
    if unknown:
        raise NetnsError(f"no host {', '.join(sorted(unknown))} in this testnet")
    fail_at = fail_at or os.environ.get(FAIL_AT_ENV) or None
    tdir.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(tdir, prefix, progress)

    state = {"dir": str(tdir), "prefix": prefix, "inet": f"{prefix}-inet", "namespaces": [], "hosts": hosts,
             "validators": validators, "genesis": None, "network": None, "genesis_params": dict(genesis_params or {}),
             "faults": faults.as_json(), "created": time.time()}
    _save(state)
    started = time.monotonic()
    try:
        _build_network(state, progress)
        apply_faults(state)
        if fail_at == "network":
            raise NetnsError("failure injected after building the network (P2PNET_TESTNET_FAIL_AT=network)")
        progress(f"network of {len(hosts)} hosts built in {time.monotonic() - started:.1f}s")
        _start_nodes(state, experts, host_experts or {}, node_args, model_store, timeout_s, progress, fail_at)
        progress(f"testnet up in {time.monotonic() - started:.1f}s")
    except BaseException:
        progress("up failed: removing everything it made")
        _teardown(state, quiet=True)
        raise
    return status(tdir)


def _clear_leftovers(tdir: Path, prefix: str, progress) -> None:
    """Refuse to start over a running testnet; remove what a crashed one left."""
    if (tdir / STATE_FILE).exists():
        old = load_state(tdir)
        if any(h.get("pid") and _alive(h["pid"], Path(h["data_dir"])) for h in old.get("hosts", [])):
            raise NetnsError(f"a testnet is already running in {tdir} (stop it with `p2pnet testnet down --dir {tdir}`)")
        progress(f"removing what an earlier testnet in {tdir} left behind")
        _teardown(old, quiet=True)
    left = our_namespaces(prefix)
    if left:
        progress(f"removing leftover namespaces {', '.join(left)}")
        _teardown({"dir": str(tdir), "prefix": prefix, "namespaces": left, "hosts": []}, quiet=True)
    left = our_namespaces(prefix)
    if left:
        raise NetnsError(f"leftovers of an earlier testnet in {tdir} cannot be removed: {', '.join(left)} "
                         "(remove them with `ip netns del NAME`)")


def _add_netns(state: dict, name: str) -> None:
    state["namespaces"].append(name)  # recorded first: a failure half way still removes it
    _save(state)
    _run("ip", "netns", "add", name)
    _run("ip", "-n", name, "link", "set", "lo", "up")


def _build_network(state: dict, progress) -> None:
    inet = state["inet"]
    _add_netns(state, inet)
    _run("ip", "-n", inet, "link", "add", "br0", "type", "bridge")
    _run("ip", "-n", inet, "link", "set", "br0", "up")
    for h in state["hosts"]:
        if h["role"] == "server":
            ns = h["netns"]
            _add_netns(state, ns)
            _run("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", h["uplink"], "netns", inet)
            _run("ip", "-n", ns, "addr", "add", f"{h['addr']}/15", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
        else:
            router, ns = h["router"], h["netns"]
            _add_netns(state, router)
            _add_netns(state, ns)
            _run("ip", "link", "add", "wan", "netns", router, "type", "veth", "peer", "name", h["uplink"], "netns", inet)
            _run("ip", "link", "add", "lan", "netns", router, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _run("ip", "-n", router, "addr", "add", f"{h['public_addr']}/15", "dev", "wan")
            _run("ip", "-n", router, "addr", "add", f"{h['lan_gw']}/24", "dev", "lan")
            _run("ip", "-n", router, "link", "set", "wan", "up")
            _run("ip", "-n", router, "link", "set", "lan", "up")
            _run("ip", "-n", ns, "addr", "add", f"{h['addr']}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", h["lan_gw"])
            _run("ip", "netns", "exec", router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
            _nft(router, nat_ruleset(h["nat"] == "symmetric"))
        _run("ip", "-n", inet, "link", "set", h["uplink"], "master", "br0", "up")
    progress(f"namespaces {state['prefix']}-*: internet bridge, "
             f"{sum(h['role'] == 'server' for h in state['hosts'])} servers, "
             f"{sum(h['role'] == 'laptop' for h in state['hosts'])} laptops behind NAT")


def nat_ruleset(symmetric: bool) -> str:
    """A home router: masquerade LAN -> WAN; from the WAN only replies pass."""
    masq = "masquerade fully-random" if symmetric else "masquerade"
    return (f"table ip {NAT_TABLE} {{\n"
            "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
            f'\t\toifname "wan" {masq}\n\t}}\n'
            "\tchain forward {\n\t\ttype filter hook forward priority 0; policy drop;\n"
            '\t\tiifname "lan" oifname "wan" accept\n'
            '\t\tiifname "wan" oifname "lan" ct state established,related accept\n\t}\n'
            "\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n"
            '\t\tiifname "wan" ct state established,related accept\n\t\tiifname "wan" drop\n\t}\n}\n')


def _node_argv(state: dict, h: dict, experts, host_experts: dict, node_args, model_store, bootstrap: list[str],
               validator: bool) -> list[str]:
    args = [sys.executable, "-m", "p2pnet_cli", "node", "start", "--data-dir", h["data_dir"],
            "--listen", f"/ip4/{h['addr']}/tcp/{P2P_PORT}", "--api-port", str(API_PORT), *node_args]
    specs = host_experts.get(h["name"], experts)
    if specs is not None and not specs:
        args.append("--no-experts")
    for spec in specs or ():
        args += ["--expert", spec]
    if model_store is not None:
        args += ["--model-store", str(model_store)]
    for b in () if state.get("network") else bootstrap:
        args += ["--bootstrap", b]
    if state.get("network"):
        args += ["--network", state["network"]]  # its genesis and bootstrap peers
    elif state["genesis"]:
        args += ["--genesis", state["genesis"]]
    if state["genesis"] and validator:
        args.append("--validator")
    return args


def _launch_node(state: dict, h: dict) -> None:
    _reap()
    Path(h["data_dir"], "node.json").unlink(missing_ok=True)
    proc = _launch(["ip", "netns", "exec", h["netns"], *h["args"]], Path(h["log"]))
    h["pid"] = proc.pid
    _save(state)


def _start_nodes(state, experts, host_experts, node_args, model_store, timeout_s, progress, fail_at) -> None:
    from p2pnet.identity import load_or_create

    hosts = state["hosts"]
    idents = [load_or_create(Path(h["data_dir"])) for h in hosts]
    for h, ident in zip(hosts, idents):
        h["peer_id"] = ident.peer_id_str
    servers = [h for h in hosts if h["role"] == "server"]
    v = state["validators"]
    if v:
        dirs = [Path(h["data_dir"]) for h in servers[:v]]
        keys = [ident.public_key for h, ident in zip(hosts, idents) if h in servers[:v]]
        state["genesis"] = str(prepare_genesis(Path(state["dir"]), dirs, keys, progress))
    first = servers[0]
    boot = [f"/ip4/{s['addr']}/tcp/{P2P_PORT}/p2p/{s['peer_id']}" for s in servers]
    if state["genesis"]:
        state["network"] = str(_write_network_spec(state, keys, boot))
        progress(f"network spec {state['network']}: {len(boot)} bootstrap servers")
    k = 0
    for h in hosts:
        if state["network"]:  # every server is a bootstrap peer (a node skips itself)
            bootstrap = [b for b in boot if not b.endswith(f"/p2p/{h['peer_id']}")]
        elif h is first:
            bootstrap = []
        elif h["role"] == "server":
            bootstrap = boot[:1]
        else:  # laptops spread over the servers
            bootstrap, k = [boot[k % len(boot)]], k + 1
        h["bootstrap"] = bootstrap
        h["args"] = _node_argv(state, h, experts, host_experts, node_args, model_store, bootstrap,
                               validator=h in servers[:v])
    _save(state)
    _launch_node(state, first)
    _wait(lambda: _node_status(first) is not None, timeout_s, f"{first['name']} to start", _died(first))
    progress(f"started {first['name']} (pid {first['pid']}) {first['peer_id']}")
    if fail_at == "nodes":
        raise NetnsError("failure injected after starting the first node (P2PNET_TESTNET_FAIL_AT=nodes)")
    for h in hosts[1:]:
        _launch_node(state, h)
        progress(f"started {h['name']} (pid {h['pid']}) {h['peer_id']}")
    for h in hosts[1:]:
        _wait(lambda h=h: _node_status(h) is not None, timeout_s, f"{h['name']} to start", _died(h))
    progress("waiting until the servers see each other and every laptop its bootstrap server")
    _wait(lambda: all(_joined(state, h, _node_status(h)) for h in hosts), timeout_s,
          "the servers to see each other and every laptop its bootstrap server",
          lambda: [_died(h)() for h in hosts])
    # up means answerable: an ask right after it must not find "no expert" on a laptop
    # whose announcements are still on their way (models load, then announce)
    n = sum(_experts_hosted(h["args"]) for h in hosts)
    if n:
        progress(f"waiting until every node knows the {n} expert(s)")
        _wait(lambda: all(_experts_known(h) >= n for h in hosts), timeout_s,
              f"every node to know the {n} expert(s)", lambda: [_died(h)() for h in hosts])


def _write_network_spec(state: dict, keys: list, boot: list[str]) -> Path:
    """``network.json`` in the testnet dir: the testnet's genesis (with
    ``genesis_params`` applied) and every server as a bootstrap peer."""
    import dataclasses

    from p2pnet import netspec
    from p2pnet.consensus.genesis import generate_genesis, load_genesis

    genesis = load_genesis(state["genesis"])
    if state.get("genesis_params"):
        params = dataclasses.replace(genesis.params, **state["genesis_params"])
        if params != genesis.params:
            genesis = generate_genesis(keys, chain_id=genesis.chain_id, genesis_time_ms=genesis.genesis_time_ms,
                                       params=params)
            Path(state["genesis"]).write_text(genesis.to_json())
    spec = netspec.make_spec(f"testnet-{state['prefix']}", genesis, boot,
                             comment=f"the namespace testnet in {state['dir']} (addresses exist only inside it)")
    path = Path(state["dir"]) / "network.json"
    path.write_text(spec.to_json())
    return path


def _died(h: dict) -> Callable[[], None]:
    def check() -> None:
        if not h.get("pid") or not _alive(h["pid"]):
            raise NetnsError(f"the node of {h['name']} (pid {h['pid']}) exited; "
                             f"last lines of {h['log']}:\n{_log_tail(Path(h['log']))}")
    return check


def _joined(state: dict, h: dict, st: Optional[dict]) -> bool:
    """A server sees every other server; a laptop one of its bootstrap servers."""
    if st is None:
        return False
    peers = set(st.get("peers", []))
    if h["role"] == "server":
        want = {s["peer_id"] for s in state["hosts"] if s["role"] == "server" and s is not h}
    else:  # a laptop: one of its bootstrap servers
        return bool({b.rsplit("/p2p/", 1)[1] for b in h.get("bootstrap", [])} & peers)
    return want <= peers


# ---------------------------------------------------------------- faults

def apply_faults(state: dict) -> None:
    """Make the kernel's rules and qdiscs match ``state["faults"]``."""
    faults = Faults.from_json(state["faults"])
    public = {h["name"]: h["public_addr"] for h in state["hosts"]}
    _nft(state["inet"], faults_mod.bridge_ruleset(faults, public))
    for h in state["hosts"]:
        rules = faults_mod.edge_rules(h["name"], faults, public)
        hook, iif = ("forward", "lan") if h["router"] else ("output", None)
        _nft(_edge_netns(h), faults_mod.edge_ruleset(rules, hook, iif))
        rate = faults.bandwidth.get(h["name"])
        for ns, dev in ((_edge_netns(h), h["edge_dev"]), (state["inet"], h["uplink"])):
            if rate:
                _run("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *faults_mod.tbf_args(rate))
            else:
                _run("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)  # none there: fine


def _change_faults(tdir: Path, change: Callable[[Faults, dict], object]):
    require_root()
    state = load_state(Path(tdir).resolve())
    faults = Faults.from_json(state["faults"])
    try:
        out = change(faults, state)
    except faults_mod.FaultError as exc:
        raise NetnsError(str(exc)) from None
    state["faults"] = faults.as_json()
    apply_faults(state)
    _save(state)
    return out


def partition(tdir: Path, a: Sequence[str], b: Optional[Sequence[str]] = None, *, reject: bool = False) -> dict:
    """Cut every host of ``a`` off from every host of ``b`` (default: all the
    others). Silent drops by default; ``reject`` also resets TCP connections."""
    def change(faults: Faults, state: dict):
        for name in [*a, *(b or ())]:
            _host(state, name)
        other = b or [h["name"] for h in state["hosts"] if h["name"] not in set(a)]
        return faults.partition(a, other, reject).as_json()
    return _change_faults(tdir, change)


def heal(tdir: Path) -> int:
    """Remove every partition; returns how many there were."""
    def change(faults: Faults, state: dict):
        n = len(faults.partitions)
        faults.partitions.clear()
        return n
    return _change_faults(tdir, change)


def set_loss(tdir: Path, pct: float, *, host: Optional[str] = None, link: Optional[Sequence[str]] = None) -> None:
    """Drop ``pct`` % of packets: of every link, of one host's, or of one link (both ways)."""
    def change(faults: Faults, state: dict):
        for name in ([host] if host else []) + list(link or ()):
            _host(state, name)
        faults.set_loss(pct, host=host, link=tuple(link) if link else None)
    _change_faults(tdir, change)


def set_bandwidth(tdir: Path, rate: Optional[str], *, host: Optional[str] = None) -> None:
    """Cap one host's uplink (or every host's) at ``rate`` each way; None removes the cap."""
    def change(faults: Faults, state: dict):
        names = [_host(state, host)["name"]] if host else [h["name"] for h in state["hosts"]]
        if rate:
            faults_mod.parse_rate(rate)
        for name in names:
            if rate:
                faults.bandwidth[name] = rate
            else:
                faults.bandwidth.pop(name, None)
    _change_faults(tdir, change)


# ---------------------------------------------------------------- nodes

def kill(tdir: Path, name: str, sig: int = signal.SIGKILL) -> int:
    """Send ``sig`` (kill -9 by default) to a host's node; returns its pid."""
    require_root()
    state = load_state(Path(tdir).resolve())
    h = _host(state, name)
    if not h.get("pid") or not _alive(h["pid"], Path(h["data_dir"])):
        raise NetnsError(f"the node of {name} is not running")
    os.kill(h["pid"], sig)
    return h["pid"]


def restart(tdir: Path, name: str, timeout_s: float = 120.0) -> int:
    """Start a stopped host's node again with the same arguments; returns
    once it has rejoined (as ``up`` waits) with its new pid."""
    require_root()
    state = load_state(Path(tdir).resolve())
    h = _host(state, name)
    if h.get("pid") and _alive(h["pid"], Path(h["data_dir"])):
        raise NetnsError(f"the node of {name} is still running (pid {h['pid']}); kill it first")
    _launch_node(state, h)
    _wait(lambda: _joined(state, h, _node_status(h)), timeout_s, f"{name} to restart and rejoin", _died(h))
    return h["pid"]


def exec_command(tdir: Path, name: str, cmd: Sequence[str]) -> tuple[list[str], dict]:
    """The argv and environment that run ``cmd`` inside a host's namespace:
    this Python's bin/ first on PATH (so ``p2pnet`` is found) and
    P2PNET_HOME set to the host's data dir (so ``p2pnet ask`` finds its node)."""
    require_root()
    h = _host(load_state(Path(tdir).resolve()), name)
    if not cmd:
        raise NetnsError("give a command to run, after --")
    env = {**os.environ, "P2PNET_HOME": h["data_dir"],
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    return [_which("ip") or "ip", "netns", "exec", h["netns"], *cmd], env


# ---------------------------------------------------------------- status and down

def status(tdir: Path) -> dict:
    require_root()
    state = load_state(Path(tdir).resolve())
    names = {h["peer_id"]: h["name"] for h in state["hosts"] if h.get("peer_id")}
    hosts = []
    for h in state["hosts"]:
        running = bool(h.get("pid")) and _alive(h["pid"], Path(h["data_dir"]))
        st = _node_status(h) if running else None
        peers = (st or {}).get("peers", [])
        hosts.append({
            "name": h["name"], "netns": h["netns"], "role": h["role"], "behind_nat": h["role"] == "laptop",
            "nat": h["nat"], "addr": h["addr"], "public_addr": h["public_addr"], "router": h["router"],
            "api": API_URL, "peer_id": h.get("peer_id"), "pid": h.get("pid"), "alive": st is not None,
            "peers": peers, "peer_names": sorted(names.get(p, p) for p in peers),
            "height": (st or {}).get("height"), "data_dir": h["data_dir"], "log": h["log"],
            # NAT traversal as the node sees it (p2pnet.gossip.relay): public / behind-nat / unknown
            "reachability": (((st or {}).get("nat") or {}).get("reachability") or {}).get("state"),
            "relays": len(((st or {}).get("nat") or {}).get("relays") or []),
        })
    return {"dir": state["dir"], "prefix": state["prefix"], "validators": state.get("validators"),
            "network": state.get("network"), "faults": state["faults"], "hosts": hosts}


def down(tdir: Path, *, timeout_s: float = 15.0) -> dict:
    """Stop the nodes and remove every namespace the testnet made (with its
    veths, bridge, qdiscs and nftables tables); returns what was removed."""
    require_root()
    tdir = Path(tdir).resolve()
    try:
        state = load_state(tdir)
    except NetnsError:
        prefix = prefix_for(tdir)
        left = our_namespaces(prefix)
        if not left:
            raise
        state = {"dir": str(tdir), "prefix": prefix, "namespaces": left, "hosts": []}
    return _teardown(state, timeout_s=timeout_s)


def _teardown(state: dict, *, timeout_s: float = 15.0, quiet: bool = False) -> dict:
    hosts = [h for h in state.get("hosts", []) if h.get("pid")]
    running = [h for h in hosts if _alive(h["pid"], Path(h["data_dir"]))]
    for h in running:
        _signal(h["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_alive(h["pid"], Path(h["data_dir"])) for h in running):
        _reap()
        time.sleep(0.05)
    for h in running:
        if _alive(h["pid"], Path(h["data_dir"])):
            _signal(h["pid"], signal.SIGKILL)
    prefix = state["prefix"]
    existing = set(our_namespaces(prefix))
    names = [ns for ns in dict.fromkeys([*state.get("namespaces", []), *sorted(existing)]) if ns in existing]
    for ns in reversed(names):
        # anything still inside (a `testnet exec` command) was started in our namespace
        for pid in _run("ip", "netns", "pids", ns, check=False).stdout.split():
            _signal(int(pid), signal.SIGKILL)
        _run("ip", "netns", "del", ns, check=False)
    _reap()
    left = our_namespaces(prefix)
    if left and not quiet:
        raise NetnsError(f"could not remove namespaces {', '.join(left)} (try `ip netns del NAME`)")
    if not left:
        (Path(state["dir"]) / STATE_FILE).unlink(missing_ok=True)
    return {"stopped": [h["pid"] for h in running], "namespaces": names}


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
