"""Waiting on conditions with a bounded deadline (never a fixed sleep), a
ticker that shows the Trio loop runs while a worker thread generates, and a
throwaway JSON server for CLI tests."""

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


@contextlib.contextmanager
def json_server(respond):
    """An HTTP server on 127.0.0.1 in a thread, for a CLI run in a subprocess to
    talk to: ``respond(method, path, body)`` (path with its query; body the
    parsed JSON of a POST, else None) returns the object answered with 200.
    Yields the base URL."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, body) -> None:
            data = json.dumps(respond(self.command, self.path, body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._answer(None)

        def do_POST(self):
            self._answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


NODE_CLI = "import sys; from p2pnet_cli.main import main; main(sys.argv[1:])"


def start_node_process(args, log, home, wait_s: float = 90):
    """Run ``p2pnet ARGS`` (``node start ...``) with its output in ``log``;
    return the process once it says ready or has exited, within ``wait_s``."""
    import os
    import subprocess
    import sys
    import time

    env = {**os.environ, "P2PNET_HOME": str(home)}
    env.pop("P2PNET_DEBUG", None)
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-c", NODE_CLI, *map(str, args)],
                                stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + wait_s
    while proc.poll() is None and b" ready; API at " not in log.read_bytes():
        if time.monotonic() > deadline:
            stop_process(proc)
            raise AssertionError(f"node neither ready nor exited in {wait_s}s: {log.read_text()}")
        time.sleep(0.05)
    return proc


def stop_process(proc) -> None:
    """SIGTERM, then SIGKILL after 30 s; always reaped."""
    import signal
    import subprocess

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
