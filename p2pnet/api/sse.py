"""Server-sent events: encoding (server side) and line-by-line decoding (client side).

Only the `data` field is used, as OpenAI's streaming API does.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from p2pnet.api.http import encode_json

DONE = b"data: [DONE]\n\n"


def encode_event(data: str) -> bytes:
    """One event; a multi-line `data` becomes several `data:` lines."""
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode() + b"\n"


def encode_json_event(obj: Any) -> bytes:
    return encode_event(encode_json(obj).decode())


def iter_event_data(lines: Iterable[bytes | str]) -> Iterator[str]:
    """The `data` of each event in a stream of lines (with or without line ends).

    Comments and fields other than `data` are skipped; an event is dispatched
    at a blank line, or at the end of the stream.
    """
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        line = line.rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)
