import json
import struct
import subprocess
import sys
from urllib.parse import parse_qs, urlparse

import lmdb
import pytest

from p2pnet.consensus.replica import Replica
from p2pnet.consensus.sim import Simulation, scenario_txs
from p2pnet.consensus.store import Ledger
from p2pnet.consensus.views import block_json, ledger_state, reputation_json, verify_json

from .conftest_net import json_server

RUN = "import sys; from p2pnet_cli.main import main; main(sys.argv[1:])"


def p2pnet(*args, env=None):
    return subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    sim = Simulation(21, n=4)
    for i, tx in enumerate(scenario_txs()[:12]):
        sim.submit_tx(i % 4, tx)
    assert sim.run_until_height(5, 60_000)
    d = tmp_path_factory.mktemp("node")
    led = Ledger.open(d / "ledger", genesis=sim.genesis)
    rep = Replica(sim.genesis, led)
    src = sim.nodes[0].ledger
    for h in range(1, src.height() + 1):
        rep._commit(src.block(h), src.commit(h))
    led.close()
    return d


def test_show_latest_and_by_height_json(data_dir):
    p = p2pnet("ledger", "show", "--json", "--data-dir", str(data_dir))
    assert p.returncode == 0, p.stderr
    latest = json.loads(p.stdout)
    assert latest["height"] == latest["ledger_height"] >= 5
    p = p2pnet("ledger", "show", "1", "--json", "--data-dir", str(data_dir))
    b1 = json.loads(p.stdout)
    assert b1["height"] == 1 and len(b1["hash"]) == 64 and b1["proposer"].startswith("12D3KooW")
    txs = [tx for h in range(1, latest["height"] + 1)
           for tx in json.loads(p2pnet("ledger", "show", str(h), "--json", "--data-dir", str(data_dir)).stdout)["txs"]]
    assert len(txs) == 12 and all(t["kind"] == "rating" and 0 <= t["score"] <= 1 for t in txs)


def test_show_text_and_missing_height(data_dir):
    p = p2pnet("ledger", "show", "--data-dir", str(data_dir))
    assert p.returncode == 0 and p.stdout.startswith("height ")
    p = p2pnet("ledger", "show", "999", "--data-dir", str(data_dir))
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1 and "no block at height 999" in p.stderr


def test_reputation(data_dir):
    p = p2pnet("reputation", "--json", "--data-dir", str(data_dir))
    obj = json.loads(p.stdout)
    assert obj["standings"] and obj["height"] >= 5
    scores = [s["score"] for s in obj["standings"]]
    assert scores == sorted(scores, reverse=True)
    p = p2pnet("reputation", "--domain", "math", "--json", "--data-dir", str(data_dir))
    assert {s["domain"] for s in json.loads(p.stdout)["standings"]} == {"math"}


def test_verify_ok_then_tampered(data_dir, tmp_path):
    p = p2pnet("ledger", "verify", "--data-dir", str(data_dir))
    assert p.returncode == 0 and p.stdout.startswith("OK")
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    env = lmdb.open(str(copy / "ledger"), max_dbs=8)
    db = env.open_db(b"blocks")
    with env.begin(write=True) as txn:
        raw = bytes(txn.get(struct.pack(">Q", 2), db=db))
        i = raw.index(b"p2pnet-sim") + 3
        txn.put(struct.pack(">Q", 2), raw[:i] + b"X" + raw[i + 1:], db=db)
    env.close()
    p = p2pnet("ledger", "verify", "--data-dir", str(copy))
    assert p.returncode == 1 and "INCONSISTENT: block 2" in p.stdout


def test_a_ledger_of_another_state_format_is_one_line(data_dir, tmp_path):
    """A ledger written by a release with another reputation rule (format 1:
    a cumulative per-pair budget) is refused on open, not misread."""
    import shutil

    from p2pnet.consensus.reputation import STATE_VERSION
    copy = tmp_path / "old"
    shutil.copytree(data_dir, copy)
    env = lmdb.open(str(copy / "ledger"), max_dbs=8)
    db = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        state = bytes(txn.get(b"app_state", db=db))
        assert state[:2] == bytes([0x95, STATE_VERSION])
        txn.put(b"app_state", b"\x95\x01" + state[2:], db=db)
    env.close()
    for args in (("reputation",), ("ledger", "verify")):
        p = p2pnet(*args, "--data-dir", str(copy))
        assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "reputation state of format 1" in p.stderr and "move the directory aside" in p.stderr


def test_missing_data_dir_is_one_line(tmp_path):
    p = p2pnet("ledger", "verify", "--data-dir", str(tmp_path / "none"))
    assert p.returncode == 1 and "no ledger" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "--api URL" in p.stderr  # it says where else to look


def test_without_flags_the_local_swarms_first_node_is_read(data_dir, tmp_path):
    import os
    import shutil

    home = tmp_path / "home"
    env = {**os.environ, "P2PNET_HOME": str(home)}
    p = p2pnet("reputation", env=env)
    assert p.returncode == 1 and "the local swarm's nodes keep none" in p.stderr
    shutil.copytree(data_dir / "ledger", home / "swarm" / "node0" / "ledger")
    p = p2pnet("reputation", "--json", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == json.loads(p2pnet("reputation", "--json", "--data-dir", str(data_dir)).stdout)
    p = p2pnet("ledger", "verify", env=env)
    assert p.returncode == 0 and p.stdout.startswith("OK (")


def test_api_mode_gets_the_same_json(data_dir):
    led = Ledger.open(data_dir / "ledger", readonly=True)

    def respond(method, path, body):
        url = urlparse(path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/ledger/block":
            return block_json(led, int(q["height"]) if "height" in q else None)
        if url.path == "/ledger/verify":
            return verify_json(led)
        return reputation_json(ledger_state(led), q.get("domain"))

    try:
        with json_server(respond) as api:
            via_api = json.loads(p2pnet("ledger", "show", "2", "--json", "--api", api).stdout)
            assert via_api == block_json(led, 2)
            rep = json.loads(p2pnet("reputation", "--json", "--api", api, "--domain", "code").stdout)
            assert rep == reputation_json(ledger_state(led), "code")
            assert p2pnet("ledger", "verify", "--api", api).stdout.startswith("OK")
    finally:
        led.close()


async def test_api_mode_sends_the_api_key_without_proxy_and_explains_a_missing_ledger(data_dir, nursery):
    import os

    import trio

    from p2pnet.api.http import Response, Router
    from p2pnet.api.server import HttpServer

    led = Ledger.open(data_dir / "ledger", readonly=True)

    async def standings(request):
        return Response.json(200, reputation_json(ledger_state(led), request.arg("domain")))

    with_ledger, without = Router(), Router()
    with_ledger.add("GET", "/reputation", standings)
    api = await nursery.start(HttpServer(with_ledger, api_key="key").run)
    bare = await nursery.start(HttpServer(without, api_key="key").run)
    env = {**os.environ, "P2PNET_API_KEY": "key", "http_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""}
    try:
        ok = await trio.to_thread.run_sync(lambda: p2pnet("reputation", "--json", "--api", api, env=env))
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout) == reputation_json(ledger_state(led), None)
        for args in (("reputation",), ("ledger", "show"), ("ledger", "verify")):
            p = await trio.to_thread.run_sync(lambda: p2pnet(*args, "--api", bare, env=env))
            assert p.returncode == 1 and p.stderr.strip().splitlines() == [
                f"p2pnet: error: the node at {bare} keeps no ledger (it was started without --genesis; "
                f"a swarm started with --validators 0 keeps none)"]
        env["P2PNET_API_KEY"] = "wrong"
        p = await trio.to_thread.run_sync(lambda: p2pnet("reputation", "--api", api, env=env))
        assert p.returncode == 1 and p.stderr.startswith(f"p2pnet: error: the node at {api} answered 401: ")
    finally:
        led.close()
