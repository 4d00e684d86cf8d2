"""A real node process (no experts, no ledger) under a slowloris wave: the
real CLI's `p2pnet status` is still answered while 80 half-sent connections
from the same address are open; a cross-origin or DNS-rebinding request to
publish gossip is refused."""

from __future__ import annotations

import http.client
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from p2pnet.api import client
from p2pnet.errors import P2PNetError
from p2pnet.node import read_runtime

pytestmark = pytest.mark.slow

WAVE = 80
HALF_HEAD = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # never finished


def wait_for(cond, timeout_s: float, what: str, check=lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        check()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def node(tmp_path):
    """(api url, process) of a node started as a user would start it; stopped by its pid."""
    data_dir = tmp_path / "node"
    env = {k: v for k, v in os.environ.items() if k != "P2PNET_API_KEY"}
    env["P2PNET_HOME"] = str(tmp_path)
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pnet_cli", "node", "start", "--data-dir", str(data_dir),
             "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0", "--no-experts"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        def alive() -> None:
            if proc.poll() is not None:
                raise AssertionError(f"the node exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}")

        def ready() -> bool:
            rt = read_runtime(data_dir)
            if not rt or not rt.get("api"):
                return False
            try:
                client.get_json(rt["api"] + "/status", timeout=5)
                return True
            except P2PNetError:
                return False

        wait_for(ready, 120, "the node's API", alive)
        yield read_runtime(data_dir)["api"], proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


class SlowlorisWave:
    """`size` half-sent connections, kept up from a thread: one the server
    times out (408) is opened again; one it evicts (503) is not, so that the
    wave does not turn into a reconnect flood."""

    def __init__(self, port: int, size: int) -> None:
        self.port = port
        self.size = size
        self.answers: list[bytes] = []  # the status line of each answer the wave got
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(HALF_HEAD)
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ)

    def __enter__(self) -> SlowlorisWave:
        for _ in range(self.size):
            self._open()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                sock = key.fileobj
                try:
                    answer = sock.recv(4096)
                except OSError:
                    answer = b""
                self._selector.unregister(sock)
                sock.close()
                self.answers.append(answer.split(b"\r\n", 1)[0])
                if b" 408 " in answer:
                    self._open()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "P2PNET_API_KEY"}
    return subprocess.run([sys.executable, "-m", "p2pnet_cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def raw_post(api: str, path: str, body: bytes, headers: dict) -> tuple[int, dict]:
    host, port = api.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": f"{host}:{port}", **headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_status_answers_during_a_slowloris_wave_and_web_pages_cannot_publish(node):
    api, proc = node
    port = int(api.rsplit(":", 1)[1])
    before = client.get_json(api + "/status")["http"]["connections_total"]  # this request's included
    polls = 0

    def accepted_the_wave() -> bool:  # every connection but our polls is the wave's
        nonlocal polls
        polls += 1
        return client.get_json(api + "/status", timeout=10)["http"]["connections_total"] - before - polls >= WAVE

    with SlowlorisWave(port, WAVE) as wave:
        wait_for(accepted_the_wave, 30, "the node to accept the whole wave")
        out = cli("status", "--api", api)  # the real CLI, as a user runs it
        assert out.returncode == 0, out.stderr
        assert "peer id" in out.stdout
        out = cli("status", "--api", api, "--json")
        assert out.returncode == 0, out.stderr
        held = json.loads(out.stdout)["http"]
        assert held["connections_pending"] >= 50, held  # answered while the wave was held
        assert proc.poll() is None
    assert any(b" 503 " in answer for answer in wave.answers)  # the surplus was told "busy"

    body = json.dumps({"text": "from a web page"}).encode()
    # a page's "simple" cross-origin POST, and the same with a JSON type (it would need a preflight)
    for content_type in ("text/plain", "application/json"):
        status, answer = raw_post(api, "/broadcast", body, {"Origin": "http://evil.example",
                                                            "Content-Type": content_type})
        assert (status, answer["error"]["code"]) == (403, "origin_not_allowed")
    # DNS rebinding: the page's own name, same-origin to the browser
    rebinding = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}",
                 "Content-Type": "application/json"}
    status, answer = raw_post(api, "/broadcast", body, rebinding)
    assert (status, answer["error"]["code"]) == (421, "host_not_allowed")
    status, answer = raw_post(api, "/broadcast", body, {"Content-Type": "text/plain"})  # no Origin: still JSON only
    assert (status, answer["error"]["code"]) == (415, "unsupported_media_type")
    by_status = client.get_json(api + "/status")["http"]["requests_by_status"]
    assert by_status.get("403") == 2 and by_status.get("421") == 1 and by_status.get("415") == 1
