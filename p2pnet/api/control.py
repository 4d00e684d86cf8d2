"""The node's local control API: status, peers, and broadcast messages.

Mounted by the node (p2pnet.node) next to the OpenAI routes; the CLI's
`status`, `peers`, `broadcast` and `messages` commands read it."""

from __future__ import annotations

from p2pnet.api.errors import HttpError
from p2pnet.api.http import Request, Response, Router

MAX_BROADCAST_CHARS = 64 * 1024


def mount_control(router: Router, node) -> None:
    async def status(request: Request) -> Response:
        out = node.status()
        server = getattr(node, "http", None)  # the HttpServer serving this API, once it runs
        if server is not None and "http" not in out:
            out["http"] = server.stats()
        return Response.json(200, out)

    async def peers(request: Request) -> Response:
        return Response.json(200, {"peer_id": node.peer_id, "peers": node.peers()})

    async def find_peer(request: Request) -> Response:
        # p2pnet peers find: a DHT lookup of one peer ID, then a dial (p2pnet.node.Node.find_peer)
        body = request.json()
        peer_id = body.get("peer_id") if isinstance(body, dict) else None
        fresh = body.get("fresh", False) if isinstance(body, dict) else False
        if not isinstance(peer_id, str) or not peer_id or not isinstance(fresh, bool):
            raise HttpError(400, 'body must be {"peer_id": "12D3Koo...", "fresh": false}', param="peer_id")
        try:
            out = await node.find_peer(peer_id, fresh=fresh)
        except ValueError as exc:
            raise HttpError(400, f"not a peer id: {exc}", param="peer_id") from None
        except LookupError as exc:
            raise HttpError(409, str(exc), code="dht_off") from None
        return Response.json(200, out)

    async def broadcast(request: Request) -> Response:
        body = request.json()
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            raise HttpError(400, "body must be {\"text\": \"...\"}", param="text", code="invalid_request")
        if len(text) > MAX_BROADCAST_CHARS:
            raise HttpError(400, f"text longer than {MAX_BROADCAST_CHARS} characters", param="text")
        out = node.broadcast(text)
        return Response.json(200 if out["ok"] else 503, out)

    async def messages(request: Request) -> Response:
        try:
            since = int(request.arg("since", "0"))
        except ValueError:
            raise HttpError(400, "since must be an integer", param="since") from None
        return Response.json(200, {
            "count": node.inbox_count,
            "messages": [m for m in node.inbox if m["n"] > since],
        })

    router.add("GET", "/status", status)
    router.add("GET", "/peers", peers)
    router.add("POST", "/peers/find", find_peer)
    router.add("POST", "/broadcast", broadcast)
    router.add("GET", "/messages", messages)
