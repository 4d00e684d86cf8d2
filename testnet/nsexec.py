"""Talking to a testnet host from this process: a worker thread enters the
host's network namespace with setns(2) and opens its sockets there (the node's
API listens on 127.0.0.1:8700 of each namespace). Used by the harness
(p2pnet_testnet.netns re-exports these), its tests and bench/wan.py."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Callable

API_PORT = 8700
API_URL = f"http://127.0.0.1:{API_PORT}"

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(netns: str, fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` called on a thread inside ``netns``: the
    sockets it opens belong to that namespace."""
    result: dict = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def tcp_connect(netns: str, addr: str, port: int, timeout: float = 1.0) -> bool:
    """True if a TCP connection from inside ``netns`` to addr:port opens."""
    import socket

    def attempt() -> bool:
        try:
            socket.create_connection((addr, port), timeout=timeout).close()
            return True
        except OSError:
            return False
    return in_netns(netns, attempt)


def api_get(netns: str, path: str, timeout: float = 5.0) -> dict:
    from p2pnet.api import client

    return in_netns(netns, client.get_json, API_URL + path, timeout=timeout)


def api_post(netns: str, path: str, obj: dict, timeout: float = 60.0) -> dict:
    from p2pnet.api import client

    return in_netns(netns, client.post_json, API_URL + path, obj, timeout=timeout)


def wait_until(cond: Callable, timeout_s: float, what: str):
    """Poll ``cond()`` every 0.2 s until it returns something true, and return
    that; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.2)
