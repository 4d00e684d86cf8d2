"""Network specs (p2pnet.netspec, `p2pnet network`, `node start --network`)
and joining that never runs alone in silence (the connector's BootstrapBook):
pure checks, the real CLI, and two real node processes on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from p2pnet import netspec
from p2pnet.config import ConfigError, build, with_network
from p2pnet.consensus.genesis import generate_genesis, load_genesis
from p2pnet.gossip.connector import BootstrapBook, _short_error
from p2pnet.identity import load_or_create

from .conftest_net import NODE_CLI, start_node_process, stop_process

PEER = "12D3KooWAFMZrjxUJAuhUT7bnvTKW7LjH44xLmzJMiQbTrAHkyGV"


def cli(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-c", NODE_CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def one_error_line(out) -> str:
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pnet: error: "), out.stderr
    assert "Traceback" not in out.stderr and "internal error" not in out.stderr
    return lines[0]


def a_spec(tmp_path, name="acme-net", boot=None, n=2):
    keys = [load_or_create(tmp_path / f"v{i}").public_key for i in range(n)]
    genesis = generate_genesis(keys, chain_id=name, genesis_time_ms=1)
    ids = [load_or_create(tmp_path / f"v{i}").peer_id_str for i in range(n)]
    boot = boot or [f"/ip4/198.18.0.{i + 1}/tcp/4001/p2p/{pid}" for i, pid in enumerate(ids)]
    return netspec.make_spec(name, genesis, boot)


# ---------------------------------------------------------------- the format

def test_a_spec_round_trips_and_its_hash_is_the_genesis_hash(tmp_path):
    spec = a_spec(tmp_path, boot=[f"/dns4/boot.example.org/tcp/4001/p2p/{PEER}",
                                  f"/ip4/203.0.113.7/tcp/4001/p2p/{PEER}"])
    path = tmp_path / "acme.json"
    path.write_text(spec.to_json())
    back = netspec.load_spec(path)
    assert back.genesis_hash == spec.genesis.hash().hex() == json.loads(path.read_text())["genesis_hash"]
    assert back.bootstrap == spec.bootstrap and back.name == "acme-net" and back.source == path
    assert back.bootstrap_peers() == [PEER]
    assert back.genesis == spec.genesis


def test_the_hash_is_of_the_document_so_an_older_spec_still_loads(tmp_path):
    """A spec written before a chain parameter existed (its genesis lacks
    it) is accepted: the hash is over the document as written, and the node
    gets that same document for its ledger."""
    obj = a_spec(tmp_path).to_json_obj()
    del obj["genesis"]["params"]["weight_failure_ppm"]  # as an older p2pnet would have written it
    obj["genesis_hash"] = netspec.document_hash(obj["genesis"])
    path = tmp_path / "old.json"
    path.write_text(json.dumps(obj))
    spec = netspec.load_spec(path)
    assert spec.genesis_hash == obj["genesis_hash"] and spec.to_json_obj()["genesis"] == obj["genesis"]
    assert json.loads(netspec.genesis_file_for(spec, tmp_path / "node").read_text()) == obj["genesis"]


def _bad(tmp_path, change):
    obj = a_spec(tmp_path).to_json_obj()
    change(obj)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("change, why", [
    (lambda o: o["genesis"].update(chain_id="other"), "genesis_hash: the spec says"),
    (lambda o: o.update(genesis_hash="00" * 32), "genesis_hash: the spec says"),
    (lambda o: o.update(bootstrap=[]), "bootstrap: a network needs at least one bootstrap address"),
    (lambda o: o.pop("bootstrap"), "bootstrap: a network needs at least one"),
    (lambda o: o.update(bootstrap=["/ip4/1.2.3.4/tcp/4001"]), "must be /ip4|ip6|dns4|dns6|dns/HOST/tcp/PORT/p2p"),
    (lambda o: o.update(bootstrap=[f"/ip4/1.2.3.4/udp/4001/p2p/{PEER}"]), "must be /ip4"),
    (lambda o: o.update(bootstrap=["not a multiaddr"]), "is not a multiaddr"),
    (lambda o: o.update(bootstrap=[f"/ip4/1.2.3.4/tcp/0/p2p/{PEER}"]), "has port 0"),
    (lambda o: o.update(bootstrap=[f"/ip4/1.2.3.4/tcp/1/p2p/{PEER}"] * 2), "listed twice"),
    (lambda o: o.update(bootstrap=[f"/ip4/1.2.3.{i}/tcp/1/p2p/{PEER}" for i in range(65)]), "at most 64"),
    (lambda o: o.update(name="Bad Name!"), "is not a network name"),
    (lambda o: o.update(extra=1), "extra: unknown key"),
    (lambda o: o.update(p2pnet_network=2), "p2pnet_network: expected 1"),
    (lambda o: o["genesis"]["validators"][0].update(power=-1), "genesis.validators[0].power"),
])
def test_a_bad_spec_is_one_error_naming_the_file(tmp_path, change, why):
    path = _bad(tmp_path, change)
    with pytest.raises(netspec.NetworkSpecError) as err:
        netspec.load_spec(path)
    assert str(err.value).startswith(f"network spec {path}: ") and why in str(err.value), str(err.value)


def test_unreadable_specs(tmp_path):
    big = tmp_path / "big.json"
    big.write_text(" " * (netspec.MAX_SPEC_BYTES + 1))
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "dir.json").mkdir()
    for name, why in (("big.json", "larger than 256 KiB"), ("junk.json", "not JSON"),
                      ("dir.json", "is a directory"), ("gone.json", "no such file")):
        with pytest.raises(netspec.NetworkSpecError, match=f"network spec {tmp_path / name}: .*{why}"):
            netspec.load_spec(tmp_path / name)


def test_names_are_found_in_the_users_dir_then_the_shipped_one(tmp_path):
    mine, shipped = tmp_path / "mine", tmp_path / "shipped"
    mine.mkdir()
    shipped.mkdir()
    (shipped / "acme-net.json").write_text(a_spec(tmp_path / "a").to_json())
    assert netspec.find_spec("acme-net", [mine, shipped]) == shipped / "acme-net.json"
    (mine / "acme-net.json").write_text(a_spec(tmp_path / "b").to_json())
    assert netspec.find_spec("acme-net", [mine, shipped]) == mine / "acme-net.json"
    with pytest.raises(netspec.NetworkSpecError, match="no network named 'other' in .*known: acme-net"):
        netspec.find_spec("other", [mine, shipped])
    with pytest.raises(netspec.NetworkSpecError, match="neither a file nor a network name"):
        netspec.find_spec("Bad Name", [mine])


def test_shipped_specs_load_and_claim_no_public_network():
    found = netspec.known_networks([netspec.packaged_networks_dir()])
    assert found, "testnet/networks ships at least one spec"
    for name, path in found.items():
        spec = netspec.load_spec(path)
        assert spec.name == name
        for addr in spec.bootstrap:  # only hosts that exist on every machine
            assert addr.startswith("/ip4/127.0.0.1/tcp/"), addr


def test_validator_keys_from_peer_ids_dirs_and_key_files(tmp_path):
    ident = load_or_create(tmp_path / "n")
    for ref in (ident.peer_id_str, str(tmp_path / "n"), str(tmp_path / "n" / "node.key")):
        assert netspec.validator_public_key(ref) == ident.public_key
    (tmp_path / "empty").mkdir()
    for ref, why in (("12D3KooWnope", "not a peer ID"), (str(tmp_path / "empty"), "no node.key")):
        with pytest.raises(netspec.NetworkSpecError, match=why):
            netspec.validator_public_key(ref)


def test_with_network_takes_the_specs_genesis_and_bootstrap(tmp_path):
    spec = a_spec(tmp_path)
    path = tmp_path / "acme.json"
    path.write_text(spec.to_json())
    own = f"/ip4/10.0.0.1/tcp/4001/p2p/{PEER}"
    cfg = with_network(build(data_dir=tmp_path / "node", network=str(path), bootstrap=(own,), validator=True))
    assert cfg.network == "acme-net" and cfg.validator
    assert cfg.bootstrap == (own, *spec.bootstrap)
    assert load_genesis(cfg.genesis).hash() == spec.genesis.hash()
    assert with_network(build(data_dir=tmp_path / "node", network=str(path))).genesis == cfg.genesis
    other = tmp_path / "other-genesis.json"
    other.write_text(a_spec(tmp_path / "x").genesis.to_json())
    with pytest.raises(ConfigError, match="is not the genesis of network acme-net"):
        with_network(build(data_dir=tmp_path / "node", network=str(path), genesis=other))
    with pytest.raises(ConfigError, match="a validator needs --network"):
        build(data_dir=tmp_path / "node", validator=True)


def test_bootstrap_book():
    a, b = f"/ip4/198.18.0.1/tcp/4001/p2p/{PEER}", "/dns4/x.example/tcp/4001/p2p/" + PEER
    book = BootstrapBook([(a, b"A"), (b, b"B")])
    book.note_fail(a, "connection refused", 10.0)
    book.note_fail(a, "timed out", 12.0)
    line = book.alone_line(set(), 4.0)
    assert line == (f"no peers: none of the 2 bootstrap peers is reachable; tried {a} (timed out); "
                    f"{b} (not dialled yet); retrying in 4.0s")
    book.note_ok(b, 13.0)
    st = book.status({b"B"}, 14.0)
    assert st[0]["tries"] == 2 and st[0]["last_error"] == "timed out" and st[0]["last_try_ago_s"] == 2.0
    assert not st[0]["connected"] and st[1]["connected"] and st[1]["last_error"] is None
    assert "no bootstrap peers configured" in BootstrapBook([]).alone_line(set(), 1.0)
    assert "the only bootstrap peer it has" in BootstrapBook([], self_listed=True).alone_line(set(), 1.0)
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError as inner:
            raise RuntimeError("failed to dial") from inner
    except RuntimeError as exc:
        assert _short_error(exc) == "Connect call failed"
    assert _short_error(RuntimeError("plain")) == "plain"


# ---------------------------------------------------------------- the CLI

def test_network_init_show_and_list(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    v0 = load_or_create(tmp_path / "v0")
    load_or_create(tmp_path / "v1")  # a data dir on this machine: its public key is used
    boot = f"/dns4/boot.acme.example/tcp/4001/p2p/{v0.peer_id_str}"
    out = cli("network", "init", "--name", "acme-net", "--validator", v0.peer_id_str, "--validator",
              tmp_path / "v1", "--power", "10", "--power", "20", "--bootstrap", boot,
              "--param", "create_empty_blocks_interval_ms=5000", "--json", env=env)
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    path = tmp_path / "cfg" / "p2pnet" / "networks" / "acme-net.json"
    assert made["file"] == str(path) and made["bootstrap"] == [boot]
    spec = netspec.load_spec(path)
    assert sorted(v.power for v in spec.genesis.validators) == [10, 20]
    assert spec.genesis.params.create_empty_blocks_interval_ms == 5000
    shown = json.loads(cli("network", "show", "acme-net", "--json", env=env).stdout)
    assert shown["genesis_hash"] == spec.genesis_hash == made["genesis_hash"]
    assert "acme-net" in cli("network", "list", env=env).stdout
    line = one_error_line(cli("network", "init", "--name", "acme-net", "--validator", v0.peer_id_str,
                              "--bootstrap", boot, env=env))
    assert "exists (pass --force" in line
    line = one_error_line(cli("network", "init", "--name", "x", "--validator", v0.peer_id_str,
                              "--bootstrap", "/ip4/1.2.3.4/tcp/4001", "--out", tmp_path / "x.json", env=env))
    assert "bootstrap: '/ip4/1.2.3.4/tcp/4001' must be" in line and not (tmp_path / "x.json").exists()


def test_bad_specs_fail_node_start_and_show_in_one_line(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    path = _bad(tmp_path, lambda o: o.update(genesis_hash="ab" * 32))
    for args in (("network", "show", path), ("node", "start", "--data-dir", tmp_path / "n", "--network", path)):
        line = one_error_line(cli(*args, env=env))
        assert f"network spec {path}: genesis_hash: the spec says abababab" in line
    line = one_error_line(cli("node", "start", "--data-dir", tmp_path / "n", "--network", "nowhere", env=env))
    assert "no network named 'nowhere'" in line


# ---------------------------------------------------------------- real nodes on 127.0.0.1

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(data_dir):
    from p2pnet.api import client

    api = json.loads((data_dir / "node.json").read_text())["api"]
    return client.get_json(api + "/status", timeout=5)


def _wait(cond, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_joiner_whose_bootstrap_is_down_says_so_then_joins(tmp_path):
    """The joiner's only bootstrap peer is not up: it keeps dialling it, logs
    which one it tried and why it failed, and `status` says so; once the
    bootstrap node starts, the joiner connects and follows its chain. The
    spec names the bootstrap peer by a /dns4/ name (localhost, from
    /etc/hosts: the system resolver, not only DNS servers)."""
    boot_dir, joiner_dir = tmp_path / "boot", tmp_path / "joiner"
    boot = load_or_create(boot_dir)
    port = _free_port()
    addr, listen = f"/dns4/localhost/tcp/{port}", f"/ip4/127.0.0.1/tcp/{port}"
    genesis = generate_genesis([boot.public_key], chain_id="loop-net",
                               params=load_genesis_params(create_empty_blocks_interval_ms=500))
    spec_path = tmp_path / "loop-net.json"
    spec_path.write_text(netspec.make_spec("loop-net", genesis, [f"{addr}/p2p/{boot.peer_id_str}"]).to_json())
    procs = []
    try:
        joiner_dir.mkdir()
        procs.append(start_node_process(["node", "start", "--data-dir", joiner_dir, "--listen",
                                         "/ip4/127.0.0.1/tcp/0", "--api-port", "0", "--no-experts",
                                         "--network", spec_path], joiner_dir / "out.log", tmp_path))
        assert procs[0].poll() is None, (joiner_dir / "out.log").read_text()
        _wait(lambda: (_status(joiner_dir)["bootstrap"][0]["tries"] >= 2
                       and "none of the 1 bootstrap peers is reachable" in (joiner_dir / "out.log").read_text()),
              60, "the joiner to retry its bootstrap peer and say so")
        st = _status(joiner_dir)
        assert st["state"] == "no peers" and st["network"] == "loop-net" and st["peer_count"] == 0
        assert st["bootstrap"][0]["addr"] == f"{addr}/p2p/{boot.peer_id_str}"
        assert not st["bootstrap"][0]["connected"] and "Connection refused" in st["bootstrap"][0]["last_error"]
        assert f"tried {addr}/p2p/{boot.peer_id_str} (" in (joiner_dir / "out.log").read_text()
        shown = cli("status", "--data-dir", joiner_dir)
        assert "NO PEERS" in shown.stderr and f"bootstrap {addr}/p2p/{boot.peer_id_str}  FAILED" in shown.stdout

        procs.append(start_node_process(["node", "start", "--data-dir", boot_dir, "--listen", listen, "--api-port",
                                         "0", "--no-experts", "--validator", "--network", spec_path],
                                        boot_dir / "out.log", tmp_path))
        assert procs[1].poll() is None, (boot_dir / "out.log").read_text()
        # the bootstrap node is the spec's only bootstrap peer: it does not dial itself
        assert _status(boot_dir)["bootstrap"] == []
        _wait(lambda: _status(joiner_dir)["peers"] == [boot.peer_id_str], 90, "the joiner to connect")
        _wait(lambda: _status(joiner_dir).get("height", 0) >= 2, 90, "the joiner to follow the chain")
        st = _status(joiner_dir)
        assert st["state"] == "ready" and st["bootstrap"][0]["connected"] and st["chain_id"] == "loop-net"
    finally:
        for proc in procs:
            stop_process(proc)
    assert all(p.poll() is not None for p in procs)


def load_genesis_params(**values):
    from p2pnet.consensus.genesis import Params

    return Params(**values)


def test_testnet_nodes_join_through_the_testnets_spec():
    """What `testnet up` runs (no root needed to check the command lines)."""
    from p2pnet_testnet import netns

    boot = [f"/ip4/198.18.0.1/tcp/4001/p2p/{PEER}", "/ip4/198.18.0.2/tcp/4001/p2p/12D3KooWB"]
    h = {"name": "server1", "data_dir": "/d/server1", "addr": "198.18.0.2"}
    args = netns._node_argv({"network": "/d/network.json", "genesis": "/d/genesis.json"}, h, None, {}, [], None,
                            boot, validator=True)
    assert args[args.index("--network") + 1] == "/d/network.json" and "--validator" in args
    assert "--bootstrap" not in args and "--genesis" not in args
    args = netns._node_argv({"network": None, "genesis": "/d/genesis.json"}, h, None, {}, [], None, boot[:1],
                            validator=False)
    assert args[args.index("--genesis") + 1] == "/d/genesis.json" and args[args.index("--bootstrap") + 1] == boot[0]
    assert "--network" not in args and "--validator" not in args
    laptop = {"role": "laptop", "bootstrap": boot}
    assert netns._joined({"hosts": []}, laptop, {"peers": ["12D3KooWB"]})  # one of its bootstrap servers is enough
    assert not netns._joined({"hosts": []}, laptop, {"peers": []})
