"""Waiting on conditions with a bounded deadline (never a fixed sleep)."""

import trio


async def wait_for(cond, timeout_s: float, what: str, poll_s: float = 0.02) -> None:
    """Return once ``cond()`` is true; fail the test after ``timeout_s``.

    The deadline only bounds a hang; nothing asserts how fast it happened."""
    with trio.move_on_after(timeout_s):
        while not cond():
            await trio.sleep(poll_s)
        return
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
