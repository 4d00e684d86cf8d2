"""The node runtime: one Trio nursery tree holding the network, the HTTP API,
the hosted experts, the query coordinator and the ledger.

Readiness flows up through ``nursery.start``. ``Node.stop()`` (SIGINT or
SIGTERM from the CLI) shuts down in order: the API and the services stop
first, then the network flushes its outbox and lingers so queued messages
reach the wire, then the host closes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Optional

import trio

from p2pnet import __version__, wire
from p2pnet.config import NodeConfig, nat_settings
from p2pnet.files import write_json_atomic
from p2pnet.gossip import topics
from p2pnet.gossip.errors import OutboxFull
from p2pnet.gossip.network import GossipNetwork
from p2pnet.gossip.policy import Watermarks
from p2pnet.identity import load_or_create

log = logging.getLogger("p2pnet.node")

RUNTIME_FILE = "node.json"


def read_runtime(data_dir: Path) -> Optional[dict]:
    """What a running node wrote about itself (API URL, pid, ...), or None."""
    try:
        return json.loads((Path(data_dir) / RUNTIME_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


class Node:
    def __init__(self, config: NodeConfig, *, experts=None, handle_signals: bool = False,
                 clock=time.time) -> None:
        self.config = config
        self.clock = clock
        self.handle_signals = handle_signals
        self.identity = load_or_create(config.data_dir)
        self.signer = self.identity.signer()
        self.started_at = clock()
        self.api_url: Optional[str] = None
        self.inbox: deque = deque(maxlen=1000)  # recent broadcasts, for `p2pnet messages`
        self.inbox_count = 0
        self._stop = trio.Event()
        self.services: list = []  # objects with optional: announce_extra(), status(), routes(router)
        self._preset_experts = experts
        self.network = GossipNetwork(
            self.identity,
            self.signer,
            config.listen,
            config.bootstrap,
            announce_addrs=config.announce_addrs,
            announce_interval_s=config.announce_interval_s,
            announce_ttl_s=config.announce_ttl_s,
            announce_min_gap_s=config.announce_min_gap_s,
            watermarks=Watermarks(config.conn_low, config.conn_high),
            announce_extra=self._announce_extra,
            clock=clock,
            state_dir=config.data_dir,
            nat=nat_settings(config),
        )
        self.network.on(topics.BROADCAST, self._on_broadcast)
        self.network.connector.dht_wanted = config.dht  # peer routing over a DHT (p2pnet.gossip.dht)

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id_str

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ run

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from p2pnet.api.control import mount_control
        from p2pnet.api.http import Router
        from p2pnet.api.server import HttpServer

        async with trio.open_nursery() as outer:
            await outer.start(self.network.run)
            try:
                async with trio.open_nursery() as inner:
                    if self.handle_signals:
                        inner.start_soon(self._watch_signals)
                    for service in await self._build_services(inner):
                        self.services.append(service)
                    router = Router()
                    mount_control(router, self)
                    for service in self.services:
                        if hasattr(service, "mount"):
                            service.mount(router)
                    server = HttpServer(router, host=self.config.api_host, port=self.config.api_port,
                                        api_key=self.config.api_key,
                                        allowed_hosts=self.config.api_allowed_hosts,
                                        allowed_origins=self.config.api_allowed_origins,
                                        extra_auth=self._dashboard_auth())
                    self.api_url = await inner.start(server.run)
                    self.http = server
                    self._write_runtime()
                    self.network.announce_soon()
                    self.network.fetch_directory_soon()  # the services' ANNOUNCE handlers are in place
                    log.info("node %s ready; API at %s; dashboard at %s/", self.peer_id, self.api_url,
                             self.api_url)
                    task_status.started(self)
                    await self._stop.wait()
                    log.info("shutting down")
                    inner.cancel_scope.cancel()
            finally:
                self._remove_runtime()
                self.network.close()
                for service in self.services:
                    close = getattr(service, "close", None)
                    if close is not None:
                        close()

    def _dashboard_auth(self):
        """With an API key: the dashboard's token opens its pages (p2pnet.api.dashboard)."""
        if not self.config.api_key:
            return None
        from p2pnet.api.dashboard import DashboardAuth

        return DashboardAuth(self.config.api_key).allows

    async def _build_services(self, nursery) -> list:
        """Start experts, coordinator and ledger; each returns a service."""
        from p2pnet.services import build_services

        return await build_services(self, nursery, self._preset_experts)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s", signal.Signals(signum).name)
                self.stop()
                return

    def _runtime_path(self) -> Path:
        return Path(self.config.data_dir) / RUNTIME_FILE

    def _write_runtime(self) -> None:
        write_json_atomic(self._runtime_path(), {
            "peer_id": self.peer_id,
            "pid": os.getpid(),
            "api": self.api_url,
            "listen": self.network.listen_addrs,
            "data_dir": str(self.config.data_dir),
            "started": self.started_at,
        })

    def _remove_runtime(self) -> None:
        info = read_runtime(self.config.data_dir)
        if info and info.get("pid") == os.getpid():
            try:
                self._runtime_path().unlink()
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ behaviour

    def _announce_extra(self) -> dict:
        extra: dict = {}
        for service in self.services:
            fn = getattr(service, "announce_extra", None)
            if fn is not None:
                extra.update(fn())
        return extra

    async def _on_broadcast(self, env: wire.Envelope) -> None:
        self.inbox_count += 1
        self.inbox.append({
            "n": self.inbox_count,
            "from": env.sender_str,
            "seq": env.seq,
            "text": env.message.text,
            "sent_ns": env.message.sent_ns,
            "received_ns": time.time_ns(),
        })

    def broadcast(self, text: str) -> dict:
        try:
            self.network.publish_nowait(topics.BROADCAST, wire.Broadcast(text=text, sent_ns=time.time_ns()))
        except OutboxFull as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True}

    def status(self) -> dict:
        peers = self.network.peers()
        out = {
            "peer_id": self.peer_id,
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(self.clock() - self.started_at, 1),
            "listen": self.network.listen_addrs,
            "api": self.api_url,
            "data_dir": str(self.config.data_dir),
            "peers": [wire.peer_id_str(p) for p in peers],
            "peer_count": len(peers),
            "connections": self.network.connections(),
            # "ready" only with peers: a node cut off from the network says so.
            "state": "ready" if peers else "no peers",
            "topics": self.network.mesh(),
            "announce_shards": self.network.shard_mesh(),
            "counters": self.network.stats.as_json(),
            "outbox": self.network.outbox_len(),
            "banned": [wire.peer_id_str(p) for p in self.network.penalties.banned(self.clock())],
            # per bootstrap address: connected, dials, last error (p2pnet.gossip.connector.BootstrapBook)
            "bootstrap": self.network.connector.bootstrap_status(),
            "network": self.config.network,
            "dht": self.network.connector.dht_status(),  # None when off
        }
        if self.network.nat is not None:  # reachability, relays, paths (p2pnet.gossip.relay)
            out["nat"] = self.network.nat.status()
            out["announced"] = list(self.network.reachable_addrs())
        for service in self.services:
            fn = getattr(service, "status", None)
            if fn is not None:
                out.update(fn())
        return out

    async def find_peer(self, peer_id: str, *, fresh: bool = False) -> dict:
        """Find a peer by its ID through the DHT and dial it (``p2pnet peers
        find``; p2pnet.gossip.connector.Connector.find_and_dial): the
        addresses found, whether it is connected now, and by what path.
        ValueError for a bad ID, LookupError with the DHT off."""
        try:
            peer = wire.peer_id_bytes(peer_id)
        except wire.WireError as exc:
            raise ValueError(str(exc)) from None
        out = await self.network.connector.find_and_dial(peer, fresh=fresh)
        nat = self.network.nat
        if nat is not None:
            out.update(path=nat.path_to(peer), relays=nat.relays_of(peer))
        return out

    def peers(self) -> list[dict]:
        nat = self.network.nat
        return [
            {"peer_id": wire.peer_id_str(p), "addrs": list(self.network.book.addrs(p)),
             **({"path": nat.path_to(p), "relay": nat.relay_of(p), "relays": nat.relays_of(p)}
                if nat is not None else {})}
            for p in self.network.peers()
        ]
