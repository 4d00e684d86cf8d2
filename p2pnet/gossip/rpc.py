"""Framing for direct request/response streams: a 4-byte big-endian length,
then one signed envelope. One request and one response per stream."""

from __future__ import annotations

import struct

import trio

from p2pnet.gossip.errors import RpcFailed

_LEN = struct.Struct(">I")


async def read_exactly(stream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise RpcFailed(f"stream closed after {len(buf)} of {n} bytes", "closed")
        buf += chunk
    return bytes(buf)


async def read_frame(stream, max_bytes: int) -> bytes:
    (length,) = _LEN.unpack(await read_exactly(stream, _LEN.size))
    if length > max_bytes:
        raise RpcFailed(f"frame of {length} bytes exceeds {max_bytes}", "oversized")
    return await read_exactly(stream, length)


async def write_frame(stream, data: bytes) -> None:
    await stream.write(_LEN.pack(len(data)) + data)


async def close_quietly(stream) -> None:
    """Close a stream (or raw connection) even while being cancelled, ignoring
    errors: the other side may be gone already."""
    with trio.CancelScope(shield=True):
        try:
            await stream.close()
        except Exception:
            pass
