"""An in-process network for driver tests and the benchmark: every message is
sealed in a real signed envelope and opened (verified) by each receiver."""

from __future__ import annotations

from typing import Dict, List, Set, Tuple

from p2pnet import wire


class MemoryHub:
    def __init__(self) -> None:
        self.services: Dict[bytes, object] = {}
        self.signers: Dict[bytes, wire.Signer] = {}
        self.cut: Set[Tuple[bytes, bytes]] = set()
        self.sent = 0

    def endpoint(self, signer: wire.Signer) -> "MemoryNet":
        self.signers[signer.peer_id] = signer
        return MemoryNet(self, signer)

    def attach(self, peer_id: bytes, service) -> None:
        self.services[peer_id] = service

    def detach(self, peer_id: bytes) -> None:
        self.services.pop(peer_id, None)

    def isolate(self, peer_id: bytes) -> None:
        for other in list(self.signers):
            if other != peer_id:
                self.cut |= {(peer_id, other), (other, peer_id)}

    def heal(self) -> None:
        self.cut = set()

    def linked(self, a: bytes, b: bytes) -> bool:
        return (a, b) not in self.cut


class MemoryNet:
    """The ``net`` interface ConsensusService expects."""

    def __init__(self, hub: MemoryHub, signer: wire.Signer) -> None:
        self.hub = hub
        self.signer = signer
        self.me = signer.peer_id

    async def _fan_out(self, raw: bytes) -> None:
        for peer, service in list(self.hub.services.items()):
            if peer == self.me or not self.hub.linked(self.me, peer):
                continue
            self.hub.sent += 1
            await service.deliver(wire.open_envelope(raw))

    async def publish(self, message: wire.Message) -> None:
        await self._fan_out(self.signer.seal(message))

    async def publish_tx(self, envelope: bytes) -> None:
        await self._fan_out(envelope)

    async def request(self, peer_id: bytes, message: wire.Message) -> wire.Message:
        service = self.hub.services.get(peer_id)
        if service is None or not self.hub.linked(self.me, peer_id):
            raise ConnectionError("peer unreachable")
        reply = await service.serve_request(wire.open_envelope(self.signer.seal(message)))
        return wire.open_envelope(self.hub.signers[peer_id].seal(reply)).message

    def peers(self) -> List[bytes]:
        return [p for p in self.hub.services if p != self.me and self.hub.linked(self.me, p)]
