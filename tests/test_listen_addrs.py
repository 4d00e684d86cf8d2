"""Listen addresses are checked before the host starts (issue 22, item 10):
py-libp2p runs on without a listener for a UDP address or a foreign IP, and
binds a busy port a second time (SO_REUSEPORT). Only 127.0.0.1 is bound
here; the foreign IP fails at bind, sending nothing."""

import json
import socket

import pytest

from p2pnet import config
from p2pnet.gossip import listen
from p2pnet.gossip.errors import GossipError

from .conftest_net import start_node_process, stop_process

FOREIGN = "198.51.100.7"  # TEST-NET-2: no machine has it


@pytest.mark.parametrize("addr, expect", [
    ("/ip4/127.0.0.1/udp/4001/quic-v1", "UDP/QUIC is not supported"),
    ("/ip4/127.0.0.1/udp/4001", "UDP/QUIC is not supported"),
    ("/dns4/localhost/tcp/4001", "DNS name"),
    ("/ip4/127.0.0.1/tcp/4001/ws", "/ws is not supported"),
    ("/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWGMsMXhTYHohBpJxvittdDRZYGh9F2tBaESAADLARfHcR", "/p2p/ID"),
])
def test_only_plain_tcp_is_accepted(addr, expect):
    with pytest.raises(listen.ListenAddrError, match=expect) as info:
        listen.parse_listen_addr(addr)
    assert isinstance(info.value, GossipError) and "/ip4/ADDR/tcp/PORT" in str(info.value)
    with pytest.raises(config.ConfigError, match=expect):  # a config file or flag says so at once
        config.build(None, listen=(addr,))


def test_plain_tcp_parses():
    assert listen.parse_listen_addr("/ip4/127.0.0.1/tcp/0") == (socket.AF_INET, "127.0.0.1", 0)
    assert listen.parse_listen_addr("/ip6/::1/tcp/4001") == (socket.AF_INET6, "::1", 4001)


def libp2p_like_listener():
    """A listener set up as py-libp2p 0.8.1 sets up its own (SO_REUSEADDR and SO_REUSEPORT)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_a_port_a_reuseport_listener_holds_is_in_use():
    held = libp2p_like_listener()
    port = held.getsockname()[1]
    try:
        with pytest.raises(listen.ListenAddrError, match=f"port {port} is already in use"):
            listen.check_listen_addrs([f"/ip4/127.0.0.1/tcp/{port}"])
    finally:
        held.close()
    listen.check_listen_addrs([f"/ip4/127.0.0.1/tcp/{port}"])  # free again


def test_a_port_left_only_in_time_wait_is_free():
    """A node restarted on its fixed port must not be refused for the
    connections its previous run closed."""
    server = libp2p_like_listener()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    conn.close()  # the server side closes first: its end stays in TIME_WAIT
    assert client.recv(1) == b""
    client.close()
    server.close()
    listen.check_listen_addrs([f"/ip4/127.0.0.1/tcp/{port}"])


def test_two_listen_addresses_on_one_port_clash():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(listen.ListenAddrError, match="already in use"):
        listen.check_listen_addrs([f"/ip4/127.0.0.1/tcp/{port}"] * 2)
    listen.check_listen_addrs(["/ip4/127.0.0.1/tcp/0"] * 2)  # port 0: two free ports


def test_an_ip_this_machine_does_not_have_is_refused():
    with pytest.raises(listen.ListenAddrError, match=f"{FOREIGN} is not an address of this machine"):
        listen.check_listen_addrs([f"/ip4/{FOREIGN}/tcp/4001"])


# ---------------------------------------------------------------- real nodes


def start_node(data_dir, listen_addr, home, wait_s=90):
    """`p2pnet node start` on ``listen_addr``; (process, log) once it says
    ready or has exited, within ``wait_s``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "out.log"
    proc = start_node_process(["node", "start", "--data-dir", data_dir, "--listen", listen_addr,
                               "--api-port", "0", "--no-experts"], log, home, wait_s)
    return proc, log


stop = stop_process


def refused_in_one_line(proc, log) -> str:
    try:
        assert proc.poll() == 1, log.read_text()  # exited, never ready
    finally:
        stop(proc)
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pnet: error: "), lines
    assert "Traceback" not in lines[0] and "internal error" not in lines[0]
    return lines[0]


@pytest.mark.slow
def test_a_second_node_on_a_running_nodes_port_is_refused(tmp_path):
    first, log = start_node(tmp_path / "a", "/ip4/127.0.0.1/tcp/0", tmp_path)
    try:
        assert first.poll() is None, log.read_text()
        addr = json.loads((tmp_path / "a" / "node.json").read_text())["listen"][0].split("/p2p/")[0]
        assert addr.startswith("/ip4/127.0.0.1/tcp/") and not addr.endswith("/tcp/0")
        second, log2 = start_node(tmp_path / "b", addr, tmp_path)
        line = refused_in_one_line(second, log2)
        assert f"cannot listen on {addr}: port {addr.rsplit('/', 1)[1]} is already in use" in line
        assert first.poll() is None  # the first node is untouched
    finally:
        stop(first)


@pytest.mark.slow
@pytest.mark.parametrize("addr, expect", [
    ("/ip4/127.0.0.1/udp/4001/quic-v1", "UDP/QUIC is not supported"),
    (f"/ip4/{FOREIGN}/tcp/4001", f"{FOREIGN} is not an address of this machine"),
])
def test_an_unbindable_listen_address_is_refused_in_one_line(tmp_path, addr, expect):
    proc, log = start_node(tmp_path / "n", addr, tmp_path)
    assert expect in refused_in_one_line(proc, log)
