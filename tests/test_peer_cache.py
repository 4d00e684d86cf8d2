"""A node whose bootstrap peers are all gone: real node processes on
127.0.0.1, each with --dht. c bootstraps from a and meets b; c stops
(its peer book goes to peers.json), a is killed, d joins through b. c
restarts with only a as bootstrap peer: it reaches b, the peer it met
before, says which bootstrap peer failed, and walks the DHT from b."""

import json
import signal

from p2pnet.api import client

from .conftest_net import start_node_process, stop_process


def test_a_node_whose_bootstrap_peers_are_gone_reaches_the_peers_it_met_and_walks_the_dht(tmp_path):
    import time

    procs, logs = {}, {}

    def start(name, *extra):
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        logs[name] = d / f"out-{len(list(d.glob('out-*.log')))}.log"  # a restart gets a new log
        procs[name] = start_node_process(
            ["node", "start", "--data-dir", d, "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0",
             "--no-experts", "--dht", *extra], logs[name], tmp_path)
        assert procs[name].poll() is None, logs[name].read_text()
        return d

    def info(d):
        return json.loads((d / "node.json").read_text())

    def status(d):
        return client.get_json(info(d)["api"] + "/status", timeout=5)

    def wait(cond, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
            time.sleep(0.2)

    try:
        a = start("a")
        boot = info(a)["listen"][0]
        b = start("b", "--bootstrap", boot)
        c = start("c", "--bootstrap", boot)
        b_id = info(b)["peer_id"]
        wait(lambda: b_id in status(c)["peers"], 60, "c to meet b")
        stop_process(procs.pop("c"))  # a clean stop saves the peer book
        assert b_id in json.loads((c / "peers.json").read_text())["peers"]
        procs["a"].send_signal(signal.SIGKILL)
        procs.pop("a").wait(timeout=30)
        d = start("d", "--bootstrap", info(b)["listen"][0])  # a peer c never met
        d_id = info(d)["peer_id"]
        wait(lambda: d_id in status(b)["peers"], 60, "d to join through b")

        c = start("c", "--bootstrap", boot)  # its only bootstrap peer is dead
        wait(lambda: b_id in status(c)["peers"], 60, "c to reach b, the peer it met before")
        assert status(c)["state"] == "ready"
        # below its low watermark it keeps dialling its bootstrap peer too, and says why that fails
        wait(lambda: status(c)["bootstrap"][0]["last_error"], 60, "c to dial its dead bootstrap peer")
        [entry] = status(c)["bootstrap"]
        assert entry["addr"] == boot and not entry["connected"] and entry["tries"] >= 1, entry
        log = logs["c"]
        wait(lambda: "peer routing: DHT walk found" in log.read_text(), 90, "c to walk the DHT from b")
        walked = [ln for ln in log.read_text().splitlines() if "DHT walk found" in ln]
        assert any(" found 0 peer" not in ln for ln in walked), walked
        assert status(c)["dht"]["walks"] >= 1
        wait(lambda: d_id in status(c)["peers"], 60, "c to reach d, whom it never met")
    finally:
        for proc in procs.values():
            stop_process(proc)
    assert all(p.poll() is not None for p in procs.values())
