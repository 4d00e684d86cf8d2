"""Carrying generated text from a model's worker thread into the Trio loop.

A backend calls ``on_token(piece)`` from whatever thread generates; the pipe
keeps the pieces in order (nothing is dropped: a generation is bounded by its
max_tokens) and a Trio task takes them out in batches."""

from __future__ import annotations

import threading
from typing import AsyncIterator, Awaitable, Callable

import trio


class TokenPipe:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._closed = False
        self._token = trio.lowlevel.current_trio_token()
        self._wakeup = trio.Event()

    def _wake(self) -> None:
        self._wakeup.set()

    def _notify(self) -> None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # a worker thread
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                pass
        else:
            self._wake()

    def on_token(self, piece: str) -> None:
        """Callable from any thread."""
        with self._lock:
            self._pieces.append(piece)
        self._notify()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._notify()

    async def batches(self) -> AsyncIterator[str]:
        """Joined pieces as they come, until closed and drained."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            with self._lock:
                pieces, self._pieces = self._pieces, []
                closed = self._closed
            if pieces:
                yield "".join(pieces)
            if closed:
                with self._lock:
                    rest, self._pieces = self._pieces, []
                if rest:
                    yield "".join(rest)
                return


async def answer_streaming(expert, query_id: bytes, prompt, *, timeout: float,
                           sink: Callable[[str], Awaitable[None]]):
    """``expert.answer(...)``, passing the text to ``sink`` in order as it is
    generated; returns once the answer is done and every piece was sunk."""
    pipe = TokenPipe()

    async def forward() -> None:
        async for text in pipe.batches():
            await sink(text)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(forward)
        try:
            return await expert.answer(query_id, prompt, timeout=timeout, on_token=pipe.on_token)
        finally:
            pipe.close()
