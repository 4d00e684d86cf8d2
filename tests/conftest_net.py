"""Waiting on conditions with a bounded deadline (never a fixed sleep), and a
ticker that shows the Trio loop runs while a worker thread generates."""

import threading

import trio


async def wait_for(cond, timeout_s: float, what: str, poll_s: float = 0.02) -> None:
    """Return once ``cond()`` is true; fail the test after ``timeout_s``.

    The deadline only bounds a hang; nothing asserts how fast it happened."""
    with trio.move_on_after(timeout_s):
        while not cond():
            await trio.sleep(poll_s)
        return
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


class LoopTicker:
    """Ticks the Trio loop ``n`` times, then sets ``ticked`` (a threading.Event
    a worker thread can wait on) and stops, not to compete for the CPU."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.ticks = 0
        self.ticked = threading.Event()

    async def run(self) -> None:
        while True:
            await trio.sleep(0.001)
            self.ticks += 1
            if self.ticks == self.n:
                self.ticked.set()
                return
