"""The node's log (one format, repeats rate-limited, py-libp2p's lines
included) and the peer book / listen port kept across restarts."""

import io
import json
import logging
import os
import socket

from p2pnet import logs
from p2pnet.gossip.peerbook import PeerBook, remember_listen, sticky_listen
from p2pnet.identity import Identity


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_repeated_lines_are_rate_limited_and_the_next_one_says_how_many():
    clock = Clock()
    f = logs.RepeatFilter(burst=3, window_s=60, clock=clock)
    rec = lambda: logging.LogRecord("libp2p.transport.tcp", logging.ERROR, "x", 1,
                                    "Failed to open TCP stream: %s", ("refused",), None)
    shown = [f.filter(rec()) for _ in range(10)]
    assert shown == [True] * 3 + [False] * 7
    clock.t = 61
    r = rec()
    assert f.filter(r) and "(and 7 like it not shown)" in r.msg
    other = logging.LogRecord("p2pnet", logging.INFO, "x", 1, "another line", (), None)
    assert f.filter(other)


def test_library_warnings_get_the_node_format(monkeypatch):
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    buf = io.StringIO()
    try:
        logs.setup("info", stream=buf)
        for _ in range(50):
            logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: %s", "refused")
        lines = buf.getvalue().splitlines()
        assert len(lines) == 5  # rate-limited
        assert all(" ERROR libp2p.transport.tcp.tcp: Failed to open TCP stream: refused" in ln for ln in lines)
        assert lines[0][:4].isdigit()  # a timestamp first
        # a py-libp2p module that set its own logger to INFO at import is lowered too
        logging.getLogger("libp2p.network.auto_connector").info("AUTO_CONNECTOR_STATE: ...")
        assert len(buf.getvalue().splitlines()) == 5
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_log_limiter_counts_what_it_hides(caplog):
    clock = Clock()
    lim = logs.LogLimiter(logging.getLogger("p2pnet.test"), burst=2, window_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="p2pnet.test"):
        for i in range(6):
            lim.warning("junk", "dropped message %d", i)
        clock.t = 11
        lim.warning("junk", "dropped message %d", 99)
        for i in range(5):
            lim.warning("junk", "dropped message %d", i)
        clock.t = 22
        lim.flush()  # the window closed with 4 lines hidden and none came after them
        lim.flush()  # said once
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["dropped message 0", "dropped message 1", "dropped message 99 (and 4 like it not shown)",
                    "dropped message 0", "4 more lines like 'junk' not shown in the last 10 s"]


def test_peer_book_survives_a_restart_and_a_bad_file(tmp_path):
    a, b = (Identity(os.urandom(32)).peer_id for _ in range(2))
    book = PeerBook(tmp_path, limit=2)
    book.note(a, ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4001/p2p/x"])
    book.note(b, ["/ip4/127.0.0.1/tcp/4002"])
    book.save()
    again = PeerBook(tmp_path)
    assert dict(again.known()) == {a: ("/ip4/127.0.0.1/tcp/4001",), b: ("/ip4/127.0.0.1/tcp/4002",)}
    (tmp_path / "peers.json").write_text("{not json")
    assert len(PeerBook(tmp_path)) == 0  # a bad file costs the memory, not the start
    book.note(Identity(os.urandom(32)).peer_id, ["/ip4/127.0.0.1/tcp/4003"])
    assert len(book) == 2  # bounded


def test_a_node_gets_its_port_back_unless_something_else_holds_it(tmp_path):
    asked = ["/ip4/127.0.0.1/tcp/0"]
    assert sticky_listen(tmp_path, asked) == asked  # first start: any port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    remember_listen(tmp_path, asked, [f"/ip4/127.0.0.1/tcp/{port}/p2p/12D3KooW"])
    assert json.loads((tmp_path / "listen.json").read_text()) == {"ports": {asked[0]: port}}
    assert sticky_listen(tmp_path, asked) == [f"/ip4/127.0.0.1/tcp/{port}"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert sticky_listen(tmp_path, asked) == asked  # taken: a new port, not a shared one
    assert sticky_listen(tmp_path, ["/ip4/127.0.0.1/tcp/4555"]) == ["/ip4/127.0.0.1/tcp/4555"]
