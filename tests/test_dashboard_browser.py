"""The dashboard in a real browser (Debian's headless Chromium, driven with
selenium) on a real local swarm: 3 node processes hosting the real SmolLM2
model, all validators of a fresh ledger. Two nodes also host an expert whose
id is hostile markup (a scripted expert: the id is the only card field a
spec may set freely), which the page must show as text and never run.

The page is loaded once and never reloaded: a query asked through the API
must appear in its recent list by itself, and the standings and ledger must
follow as the ratings commit. Every wait is bounded and on the DOM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from p2pnet.api import client
from p2pnet.api.errors import HttpError
from p2pnet_testnet import swarm

from .browser import chromium, console_problems, wait_until

pytestmark = pytest.mark.slow

IMG = "<img src=x onerror=window.__pwned=1>"
SCRIPT = "<script>window.__pwned2=1</script>"
QUESTION = "What is the capital of Spain?"


@pytest.fixture(scope="module")
def page(tmp_path_factory, model_cache, smollm2_path):
    sw = tmp_path_factory.mktemp("dash") / "sw"
    real = ["--expert", "model=smollm2-135m"]
    nodes = swarm.up(3, sw, validators=3, model_store=model_cache, timeout_s=300,
                     node_args=["--threads", "1", "--log-level", "warning"],
                     extra_args={1: [*real, "--expert", f"model=scripted:wrong,id={SCRIPT}"],
                                 2: [*real, "--expert", f"model=scripted:wrong,id={IMG}"]})
    driver = None
    try:
        driver = chromium()
        driver.set_page_load_timeout(30)
        driver.get(nodes[0]["api"] + "/")
        wait_until(lambda: driver.find_element("tag name", "body").get_attribute("data-updated"), 30,
                   "the first snapshot drawn")
        driver.execute_script("window.__sameDocument = 42")  # gone if the page ever reloads
        yield nodes, driver
    finally:
        if driver is not None:
            driver.quit()
        swarm.down(sw)


def js(driver, script):
    return driver.execute_script("return " + script)


def texts(driver, selector):
    return [e.text for e in driver.find_elements("css selector", selector)]


def assert_clean(driver):
    assert console_problems(driver) == []
    assert js(driver, "window.__sameDocument") == 42


def test_the_page_shows_the_node_its_peers_experts_and_ledger(page):
    nodes, driver = page
    me, others = nodes[0]["peer_id"], {n["peer_id"] for n in nodes[1:]}
    assert driver.find_element("id", "node-peer-id").text == me
    facts = driver.find_element("id", "node-facts").text
    assert "loopback only" in facts and "p2pnet-local" in facts and "3 validators" in facts
    rows = wait_until(lambda: [r for r in driver.find_elements("css selector", "#peer-table tbody tr")
                               if "connected" in r.text] if len(texts(driver, "#peer-table tbody tr")) == 2 else None,
                      30, "both peers listed as connected")
    assert {r.get_attribute("data-peer") for r in rows} == others
    assert all("validator" in r.text and "expert host" in r.text for r in rows)
    assert len(driver.find_elements("css selector", "#peer-graph g.peer-node")) == 3  # this node and two peers
    # every announced card: three copies of SmolLM2 (one model file) and the two scripted ones
    wait_until(lambda: len(texts(driver, "#expert-table tbody tr")) == 5, 30, "five experts listed")
    smol = [r for r in driver.find_elements("css selector", "#expert-table tbody tr")
            if r.get_attribute("data-expert") == "smollm2-135m"]
    assert {r.get_attribute("data-peer") for r in smol} == {me} | others
    assert all("×3" in r.text for r in smol)
    assert len(texts(driver, "#validator-table tbody tr")) == 3
    wait_until(lambda: "OK up to height" in driver.find_element("id", "verify-status").text, 30, "verify OK")
    assert_clean(driver)


def test_a_query_appears_without_a_reload_and_its_ratings_reach_the_standings(page):
    nodes, driver = page
    body = {"model": "p2pnet", "messages": [{"role": "user", "content": QUESTION}], "respondents": 3,
            "max_tokens": 12, "temperature": 0.7, "deadline_s": 200}
    out = client.post_json(nodes[0]["api"] + "/v1/chat/completions", body, timeout=240)
    prov = out["p2pnet"]
    item = wait_until(lambda: driver.find_elements("css selector", f'li[data-query-id="{prov["query_id"]}"]'), 30,
                      "the query in the recent list")[0]
    rows = item.find_elements("css selector", "tbody tr")
    assert len(rows) == len(prov["respondents"])
    chosen = [r for r in rows if "chosen" in r.get_attribute("class")]
    assert len(chosen) == 1 and prov["chosen"]["expert_id"] in chosen[0].text
    assert QUESTION not in driver.page_source  # the prompt is never shown (nor kept)
    # the coordinator's ratings commit; the standings, the chart and the last blocks show them
    rated = {r["peer_id"] for r in prov["respondents"] if r["score"] is not None and r["peer_id"] != nodes[0]["peer_id"]}
    assert rated, prov
    wait_until(lambda: rated <= {e.get_attribute("data-peer") for e in
                                 driver.find_elements("css selector", "#standings tbody tr")}, 120,
               "the rated experts in the standings")
    wait_until(lambda: len(driver.find_elements("css selector", "#standing-chart polyline.series")) >= len(rated), 30,
               "a line per rated expert in the chart")
    assert "general" in driver.find_element("id", "standings").text
    wait_until(lambda: "agreement" in driver.find_element("id", "block-table").text, 30, "ratings in the last blocks")
    assert_clean(driver)


def test_hostile_model_cards_are_shown_as_text_and_never_run(page):
    nodes, driver = page
    ids = wait_until(lambda: {IMG, SCRIPT} <= set(texts(driver, "#expert-table td.expert-id"))
                     and texts(driver, "#expert-table td.expert-id"), 30, "the hostile ids shown")
    assert IMG in ids and SCRIPT in ids
    assert IMG in driver.find_element("id", "peer-table").text  # also where the peers list their experts
    assert js(driver, "typeof window.__pwned") == "undefined"
    assert js(driver, "typeof window.__pwned2") == "undefined"
    assert js(driver, "document.images.length") == 0  # no <img> was made from the card
    assert js(driver, "document.scripts.length") == 1  # only the page's own script
    assert js(driver, "document.querySelectorAll('[onerror]').length") == 0
    assert_clean(driver)


def test_unknown_paths_and_writes_are_refused_on_a_real_node(page):
    nodes, _ = page
    api = nodes[0]["api"]
    with pytest.raises(HttpError) as missing:
        client.get_json(api + "/no/such/page")
    assert missing.value.status == 404
    with pytest.raises(HttpError) as write:
        client.post_json(api + "/dashboard/state", {})
    assert write.value.status == 405


def test_the_cli_prints_the_dashboard_url(page):
    nodes, _ = page
    api = nodes[0]["api"]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(nodes[0]["data_dir"])}  # no DISPLAY: print, open nothing
    out = subprocess.run([sys.executable, "-m", "p2pnet_cli", "dashboard", "--api", api],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0 and out.stdout.strip() == api + "/", out.stderr
    assert "no graphical browser" in out.stderr
    log = (Path(nodes[0]["data_dir"]) / "node.log").read_text()
    assert f"dashboard: {api}/" in log  # `p2pnet node start` printed it once ready


async def test_a_key_protected_node_without_a_ledger_opens_with_its_token(tmp_path, nursery):
    """In-process node: an API key, no experts, no genesis. The URL `p2pnet
    node start` prints (with the dashboard token) opens the page in the
    browser; the token leaves the address bar; the page says there is no
    ledger; the key-less URL is refused."""
    import trio

    from p2pnet import config
    from p2pnet.api.dashboard import dashboard_url
    from p2pnet.node import Node

    cfg = config.build(None, data_dir=tmp_path / "n", listen=("/ip4/127.0.0.1/tcp/0",), api_port=0,
                       no_experts=True, api_key="k3y-for-the-test")
    node = Node(cfg)
    await nursery.start(node.run)
    url = dashboard_url(node.api_url, cfg.api_key)
    assert "token=" in url and "k3y-for-the-test" not in url

    def browse():
        driver = chromium()
        try:
            driver.get(node.api_url + "/")
            refused = driver.find_element("tag name", "body").text
            driver.get(url)
            wait_until(lambda: driver.find_element("tag name", "body").get_attribute("data-updated"), 30,
                       "the first snapshot drawn")
            return (refused, driver.current_url, driver.find_element("id", "node-peer-id").text,
                    driver.find_element("id", "ledger").text, driver.find_element("id", "reputation").text,
                    driver.find_element("id", "expert-count").text, console_problems(driver))
        finally:
            driver.quit()

    refused, current, peer_id, ledger, rep, experts, problems = await trio.to_thread.run_sync(browse)
    assert "invalid_api_key" in refused and "p2pnet dashboard" in refused
    assert current == node.api_url + "/"  # redirected: the token is out of the address bar
    assert peer_id == node.peer_id
    assert "no ledger" in ledger and "no ledger" in rep and experts == "0 announced"
    # the 401 page logged its failed load; nothing else may have
    assert [p for p in problems if "401" not in p["message"]] == []
    node.stop()
