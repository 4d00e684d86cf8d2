"""The dashboard without a browser: its routes over the real HTTP server
(read-only, 404 for unknown paths, the security headers, the dashboard token
of a key-protected node), the recent-query summaries (never a prompt or an
answer), and the ledger replay behind the standing-over-height chart."""

from __future__ import annotations

import json

import pytest

from p2pnet.api.control import mount_control
from p2pnet.api.dashboard import CSP, DashboardAuth, dashboard_token, dashboard_url, mount_dashboard
from p2pnet.api.http import Router
from p2pnet.api.server import HttpServer
from p2pnet.consensus import reputation
from p2pnet.consensus.views import ledger_state
from p2pnet.dashboard.history import LedgerHistory
from p2pnet.dashboard.recent import RecentQueries
from p2pnet.dashboard.views import address_scope, experts_view, reachability
from p2pnet.query import ChatRequest, ChatResult, Provenance

from .test_http_guard import FakeNode, call, call_raw, host
from .test_ledger_store import build_chain

KEY = "s3cret-key"
SNAPSHOT = {"node": {"peer_id": "12D3KooWtest"}, "marker": "<img src=x onerror=alert(1)>"}


async def serve(nursery, api_key=None, api_host="127.0.0.1"):
    router = Router()
    mount_control(router, FakeNode())
    mount_dashboard(router, lambda: SNAPSHOT, api_key=api_key)
    auth = DashboardAuth(api_key).allows if api_key else None
    url = await nursery.start(HttpServer(router, host=api_host, api_key=api_key, extra_auth=auth).run)
    return int(url.rsplit(":", 1)[1])


async def raw(port, method, target, headers=()):
    """One request with a loopback Host; (status, headers, body bytes)."""
    return await call_raw(port, method, target, [host(port), *headers])


async def test_the_page_its_assets_and_the_state_are_served_with_safe_headers(nursery):
    port = await serve(nursery)
    status, headers, body = await raw(port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script src="dashboard/app.js" defer></script>' in body
    assert b"http://" not in body and b"https://" not in body  # no CDN: every asset from the node
    assert headers["content-security-policy"] == CSP and "script-src 'self'" in CSP and "unsafe" not in CSP
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    for path, kind in (("/dashboard/app.js", "text/javascript"), ("/dashboard/app.css", "text/css"),
                       ("/dashboard/icon.svg", "image/svg+xml")):
        status, headers, body = await raw(port, "GET", path)
        assert status == 200 and headers["content-type"].startswith(kind) and body
    status, headers, body = await raw(port, "GET", "/dashboard/state")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == SNAPSHOT and headers["cache-control"] == "no-store"
    status, headers, body = await raw(port, "HEAD", "/")
    assert status == 200 and body == b""


def test_the_script_never_parses_network_strings_as_html():
    from importlib import resources

    script = resources.files("p2pnet.dashboard").joinpath("static", "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "http://" not in script.replace('"http://www.w3.org/2000/svg"', "")  # no CDN, no other origin


@pytest.mark.parametrize("path", ["/nope", "/dashboard", "/dashboard/nope.js", "/dashboard/state/x",
                                  "/dashboard/%73tate", "/static/dashboard.js"])
async def test_unknown_paths_are_404(nursery, path):
    port = await serve(nursery)
    status, _, body = await raw(port, "GET", path)
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/", "/dashboard/state", "/dashboard/app.js"])
async def test_no_dashboard_route_changes_state(nursery, method, path):
    port = await serve(nursery)
    status, headers, body = await call(port, method, path, [host(port), ("content-type", "application/json")], b"{}")
    assert status == 405 and headers["allow"] == "GET", body


async def test_a_foreign_page_cannot_read_the_state(nursery):
    port = await serve(nursery)
    status, _, _ = await raw(port, "GET", "/dashboard/state", [("origin", "http://evil.example")])
    assert status == 403
    status, _, body = await raw(port, "GET", "/dashboard/state", [("origin", f"http://127.0.0.1:{port}")])
    assert status == 200 and json.loads(body) == SNAPSHOT


async def test_a_key_protected_node_opens_the_dashboard_to_its_token_only(nursery):
    port = await serve(nursery, api_key=KEY)
    token = dashboard_token(KEY)
    auth = DashboardAuth(KEY)
    # no credential: 401, and the page says where the URL with the token is
    status, _, body = await raw(port, "GET", "/")
    assert status == 401 and "p2pnet dashboard" in json.loads(body)["error"]["message"]
    assert (await raw(port, "GET", "/?token=" + "0" * 64))[0] == 401
    assert (await raw(port, "GET", "/dashboard/state?token=" + token))[0] == 401  # the query opens / only
    # the token in the URL: a cookie (HttpOnly, SameSite=Strict) and a redirect that drops the token
    status, headers, _ = await raw(port, "GET", "/?token=" + token)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{auth.cookie}={token};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    jar = ("cookie", f"other=1; {auth.cookie}={token}")
    assert (await raw(port, "GET", "/", [jar]))[0] == 200
    status, _, body = await raw(port, "GET", "/dashboard/state", [jar])
    assert status == 200 and json.loads(body) == SNAPSHOT
    # the cookie opens nothing else, and no write
    assert (await raw(port, "GET", "/status", [jar]))[0] == 401
    assert (await call(port, "POST", "/broadcast", [host(port), jar, ("content-type", "application/json")],
                       b'{"text": "x"}'))[0] == 401
    assert (await raw(port, "GET", "/", [("cookie", f"{auth.cookie}={'0' * 64}")]))[0] == 401
    # the key itself still works for everything
    bearer = ("authorization", f"Bearer {KEY}")
    assert (await raw(port, "GET", "/dashboard/state", [bearer]))[0] == 200
    assert (await raw(port, "GET", "/status", [bearer]))[0] == 200


def test_dashboard_url():
    assert dashboard_url("http://127.0.0.1:8700") == "http://127.0.0.1:8700/"
    assert dashboard_url("http://0.0.0.0:8700", KEY) == f"http://127.0.0.1:8700/?token={dashboard_token(KEY)}"
    assert dashboard_url("http://[::]:9000/") == "http://[::1]:9000/"
    assert dashboard_url("http://[fd00::1]:9000") == "http://[fd00::1]:9000/"
    assert KEY not in dashboard_url("http://10.0.0.2:8700", KEY)  # the key never goes into a URL


def test_recent_queries_keep_the_provenance_never_the_prompt_or_the_answer():
    recent = RecentQueries(size=3, clock=lambda: 1000.0)
    secret_prompt, secret_answer = "my bank PIN is 4321", "the answer names Paris"
    req = ChatRequest(model="p2pnet", messages=(("user", secret_prompt),), domain="geography", user="alice")
    prov = {"domain": "geography", "selection": {"policy": "reputation", "reason": "best standing"},
            "respondents": [{"peer_id": "12D3KooWa", "expert_id": "e1", "status": "ok", "latency_ms": 120,
                             "score": 1.0, "signal": "agreement", "completion_tokens": 5}],
            "chosen": {"peer_id": "12D3KooWa", "expert_id": "e1"}, "reason": "majority",
            "cascade": {"path": "network", "confidence": 0.2, "reason": "low", "local_text": secret_answer}}
    result = ChatResult(secret_answer, "stop", 7, 5, "ab" * 16, Provenance.from_json(prov))
    for _ in range(4):
        recent.record(req, result, None, 0.25)
    out = recent.as_json()
    assert out["count"] == 4 and [q["n"] for q in out["queries"]] == [4, 3, 2]  # bounded, newest first
    q = out["queries"][0]
    assert q["respondents"][0]["expert_id"] == "e1" and q["latency_ms"] == 250 and q["chosen"]["expert_id"] == "e1"
    assert q["reason"] == "majority" and q["selection"]["policy"] == "reputation" and q["cascade"]["path"] == "network"
    text = json.dumps(out)
    assert secret_prompt not in text and secret_answer not in text and "alice" not in text

    from p2pnet.api.errors import HttpError

    recent.record(req, None, HttpError(503, "no expert available", code="no_expert"), 0.01)
    failed = recent.as_json()["queries"][0]
    assert failed["ok"] is False and failed["error"] == {"status": 503, "code": "no_expert",
                                                         "message": "no expert available"}
    assert secret_prompt not in json.dumps(failed)


def test_addresses_are_labelled_honestly():
    assert address_scope("/ip4/127.0.0.1/tcp/4001") == "loopback"
    assert address_scope("/ip4/192.168.1.4/tcp/4001") == "private"
    assert address_scope("/ip4/100.64.0.1/tcp/4001") == "private"  # carrier-grade NAT
    assert address_scope("/ip4/8.8.8.8/tcp/4001") == "public"
    assert address_scope("/ip6/::1/tcp/4001") == "loopback"
    assert address_scope("/ip4/0.0.0.0/tcp/4001") == "all interfaces"
    assert address_scope("/dns4/node.example/tcp/4001") == "dns name"
    assert reachability(["/ip4/127.0.0.1/tcp/1"], [])["summary"].startswith("loopback only")
    behind = reachability(["/ip4/192.168.1.4/tcp/1"], [])
    assert "NAT" in behind["summary"] and behind["relayed"] is False
    public = reachability(["/ip4/192.168.1.4/tcp/1"], ["/ip4/8.8.8.8/tcp/1"])
    assert "not verified" in public["summary"]


def test_copies_of_one_model_are_marked():
    def card(peer, expert, sha):
        return {"peer_id": peer, "expert_id": expert, "model": "m", "sha256": sha}

    out = experts_view([card("a", "x", "s1"), card("b", "x", "s1"), card("c", "y", "s2"), card("d", "z", "")])
    by = {c["peer_id"]: c for c in out}
    assert by["a"]["copies"] == by["b"]["copies"] == 2 and by["a"]["copy_group"] == by["b"]["copy_group"] == 1
    assert by["c"]["copies"] == 1 and by["c"]["copy_group"] is None and by["d"]["copies"] == 1


def test_the_standing_history_replays_the_chain_with_the_reputation_code():
    sim = build_chain(8)
    ledger = sim.nodes[0].ledger
    top = ledger.height()
    history = LedgerHistory(sim.genesis, replay_batch=3, max_points=4, blocks_shown=3)
    snap = history.refresh(ledger)
    assert snap["history"]["replayed_height"] == 3  # at most replay_batch blocks a refresh
    while history.snapshot["history"]["replayed_height"] < top:
        history.refresh(ledger)
    snap = history.snapshot
    final = {(s.peer_id, s.domain): s for s in reputation.standings(ledger_state(ledger))}
    assert final and snap["history"]["error"] is None
    series = {(s["peer_id"], s["domain"]): s for s in snap["history"]["series"]}
    assert set(series) == set(final)
    for key, s in series.items():  # the replay ends where the committed state is
        assert s["points"][-1] == [top, round(final[key].score, 4)]
        assert len(s["points"]) <= 5 and [p[0] for p in s["points"]] == sorted(p[0] for p in s["points"])
    assert snap["history"]["points"] <= 5  # thinned to max_points (+ the point at the replayed height)
    assert [b["height"] for b in snap["blocks"]] == [top, top - 1, top - 2]
    assert snap["verify"]["ok"] is True and snap["verify"]["height"] == top
    signed = {v["peer_id"]: v["last_signed_height"] for v in snap["validators"]}
    assert len(signed) == 4 and max(h for h in signed.values() if h) == top


def test_swarm_up_prints_the_dashboard_url(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from p2pnet_cli.main import _register, cli
    from p2pnet_testnet import swarm

    monkeypatch.setattr(swarm, "up", lambda n, d, **kw: [
        {"index": i, "peer_id": f"peer{i}", "api": f"http://127.0.0.1:{9000 + i}", "peers": []} for i in range(n)])
    _register()
    out = CliRunner().invoke(cli, ["swarm", "up", "--no-experts", "--nodes", "2", "--dir", str(tmp_path / "sw")])
    assert out.exit_code == 0 and "dashboard: http://127.0.0.1:9000/" in out.output


def test_the_dashboard_command_fails_in_one_line_without_a_node(tmp_path):
    import subprocess
    import sys

    env = {"PATH": "/usr/bin:/bin", "P2PNET_HOME": str(tmp_path)}
    for args in (["--api", "http://127.0.0.1:1"], ["--api", "not a url"], []):
        out = subprocess.run([sys.executable, "-m", "p2pnet_cli", "dashboard", "--no-open", *args],
                             capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode != 0 and out.stdout == "", out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("p2pnet: error:") and "Traceback" not in out.stderr, out.stderr


async def test_the_snapshot_of_real_nodes_counts_peers_experts_and_every_answered_query(nursery, tmp_path):
    """In-process nodes over real libp2p with scripted experts: the state the
    page polls, and the recent list filled by the API for a plain, a streamed
    and a failed query (the prompts never kept)."""
    import openai
    import trio

    from p2pnet.api import client

    from .test_coordinator import QUESTION, ask, paris, start_cluster

    nodes = await start_cluster(nursery, tmp_path, [paris(seed=1), paris(seed=2)])
    coord = nodes[0]
    await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=2))

    def stream():
        api = openai.OpenAI(base_url=coord.api_url + "/v1", api_key="unused", max_retries=0, timeout=60)
        chunks = api.chat.completions.create(model="p2pnet", stream=True,
                                             messages=[{"role": "user", "content": QUESTION}])
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert "Paris" in await trio.to_thread.run_sync(stream)
    with pytest.raises(openai.NotFoundError):
        await trio.to_thread.run_sync(lambda: openai.OpenAI(
            base_url=coord.api_url + "/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": QUESTION}]))
    state = await trio.to_thread.run_sync(lambda: client.get_json(coord.api_url + "/dashboard/state"))
    assert state["me"] == coord.peer_id and state["node"]["peer_id"] == coord.peer_id
    assert state["node"]["roles"] == ["user"] and state["node"]["network"]["chain_id"] is None
    assert state["reputation"] is None and state["ledger"] is None  # no genesis: no ledger
    peers = {p["peer_id"]: p for p in state["peers"]}
    assert set(peers) == {n.peer_id for n in nodes[1:]}
    for peer in peers.values():
        assert peer["connected"] and peer["roles"] == ["expert host"] and peer["received"] > 0
    assert {c["peer_id"] for c in state["experts"]} == set(peers) and state["experts_total"] == 2
    queries = state["queries"]
    assert queries["count"] == 3
    failed, streamed, plain = queries["queries"]
    assert plain["ok"] and len(plain["respondents"]) == 2 and plain["chosen"]["peer_id"] in peers
    assert streamed["ok"] and streamed["stream"] is True
    assert not failed["ok"] and failed["error"]["status"] == 404 and failed["model"] == "no-such-model"
    assert QUESTION not in json.dumps(state) and "Paris" not in json.dumps(state)
