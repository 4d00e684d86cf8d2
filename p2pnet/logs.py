"""The node's log: one format for p2pnet's lines and py-libp2p's, and repeated
lines rate-limited.

py-libp2p 0.8.1 detaches its ``libp2p`` logger at import (no handler,
``propagate = False``), so its warnings went to Python's last-resort handler
with neither timestamp nor level, and its auto-connector's redials wrote
"Failed to open TCP stream" hundreds of times. ``setup`` hands its records
back to the root handler and puts a ``RepeatFilter`` there.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable


class _Window:
    """At most ``burst`` events per key per ``window_s``; counts the rest."""

    def __init__(self, burst: int, window_s: float, clock: Callable[[], float]) -> None:
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._state: dict = {}  # key -> [window start, shown, suppressed]

    def expired(self) -> list:
        """(key, suppressed) of closed windows that hid lines; forgets them."""
        now = self.clock()
        out = []
        for key, st in list(self._state.items()):
            if now - st[0] >= self.window_s:
                if st[2]:
                    out.append((key, st[2]))
                del self._state[key]
        return out

    def admit(self, key) -> tuple[bool, int]:
        """(show this one?, how many were suppressed before it)."""
        now = self.clock()
        st = self._state.get(key)
        if st is None or now - st[0] >= self.window_s:
            suppressed = st[2] if st else 0
            self._state[key] = [now, 1, 0]
            if len(self._state) > 4096:  # bounded: forget the oldest windows
                for old in list(self._state)[:1024]:
                    del self._state[old]
            return True, suppressed
        if st[1] < self.burst:
            st[1] += 1
            return True, 0
        st[2] += 1
        return False, 0


class LogLimiter:
    """Rate-limited logging for lines a peer can make us repeat."""

    def __init__(self, logger: logging.Logger, *, burst: int = 5, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self._window = _Window(burst, window_s, clock)

    def log(self, level: int, key, msg: str, *args) -> None:
        if not self.logger.isEnabledFor(level):
            return
        show, suppressed = self._window.admit(key)
        if show:
            if suppressed:
                msg = f"{msg} (and {suppressed} like it not shown)"
            self.logger.log(level, msg, *args)

    def flush(self) -> None:
        """Say how many lines each closed window hid (call it now and then:
        a line that never comes back would otherwise never say so)."""
        for key, n in self._window.expired():
            self.logger.warning("%d more lines like %r not shown in the last %.0f s", n, key, self._window.window_s)

    def warning(self, key, msg: str, *args) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def info(self, key, msg: str, *args) -> None:
        self.log(logging.INFO, key, msg, *args)

    def debug(self, key, msg: str, *args) -> None:
        self.log(logging.DEBUG, key, msg, *args)


class RepeatFilter(logging.Filter):
    """A handler filter: a record whose (logger, format string) repeats is
    shown ``burst`` times per ``window_s``; the next one shown says how many
    were not."""

    def __init__(self, burst: int = 5, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = _Window(burst, window_s, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        show, suppressed = self._window.admit((record.name, str(record.msg)))
        if show and suppressed:
            record.msg = f"{record.msg} (and {suppressed} like it not shown)"
        return show


LIBRARY_LOGGERS = ("libp2p", "multiaddr", "async_service", "aioquic")


def setup(level: str = "info", stream=None) -> None:
    """The node's logging: timestamp, level and logger name on every line,
    py-libp2p's warnings included, repeats rate-limited."""
    import libp2p  # noqa: F401  (its import detaches the libp2p logger; undo that after)

    root = logging.getLogger()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper())
    root.setLevel(numeric)
    # py-libp2p logs a lot at INFO; keep its warnings only. Some of its modules
    # set their own logger to INFO at import (the auto-connector logs two lines
    # every 10 s on an idle node): those are lowered too.
    floor = max(logging.WARNING, numeric)
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        lib.handlers.clear()
        lib.propagate = True
        lib.setLevel(floor)
    for name, lib in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(lib, logging.Logger) and name.split(".")[0] in LIBRARY_LOGGERS:
            lib.handlers.clear()
            lib.propagate = True
            if lib.level != logging.NOTSET:
                lib.setLevel(max(lib.level, floor))
