"""Take docs/img/dashboard.png: the dashboard of a real local swarm (3 nodes
hosting the real SmolLM2 model, all validators) after a few queries, in
Debian's headless Chromium driven with selenium (the dev extras).

    .venv/bin/python scripts/dashboard_screenshot.py [--out docs/img/dashboard.png]

The swarm runs in a temporary directory and is stopped at the end."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = ("What is the capital of France?", "What is the capital of Italy?", "What is 2 + 2?",
             "What colour is the sky on a clear day?", "What is the capital of Spain?",
             "How many legs does a spider have?")


def browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                            options=options)


def wait(cond, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"error: timed out waiting for {what}")
        time.sleep(0.3)


def _shrink(path: Path) -> None:
    """256 colours are plenty for a page of flat colours: a third of the bytes (needs Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        return
    image = Image.open(path).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/img/dashboard.png"))
    parser.add_argument("--model-store", type=Path, default=Path.home() / ".cache" / "p2pnet-test-models")
    parser.add_argument("--width", type=int, default=1400)
    args = parser.parse_args()

    from p2pnet.api import client
    from p2pnet.experts import modelstore
    from p2pnet_testnet import swarm

    if modelstore.stored(modelstore.DEFAULT_MODEL, args.model_store) is None:
        modelstore.pull(modelstore.DEFAULT_MODEL, args.model_store)
    sw = Path(tempfile.mkdtemp(prefix="p2pnet-shot-")) / "swarm"
    nodes = swarm.up(3, sw, validators=3, model_store=args.model_store, timeout_s=300,
                     node_args=["--threads", "1", "--log-level", "warning"], progress=print)
    driver = None
    try:
        api = nodes[0]["api"]
        for question in QUESTIONS:
            body = {"model": "p2pnet", "messages": [{"role": "user", "content": question}], "respondents": 3,
                    "max_tokens": 16, "temperature": 0.7, "deadline_s": 200}
            client.post_json(api + "/v1/chat/completions", body, timeout=240)
        driver = browser(args.width, 1000)
        driver.get(api + "/")
        wait(lambda: len(driver.find_elements("css selector", "#standings tbody tr")) >= 2, 120, "standings")
        wait(lambda: len(driver.find_elements("css selector", "#query-list li[data-query-id]")) == len(QUESTIONS),
             60, "the recent queries")
        time.sleep(2.5)  # one more poll: the chart and verify settle  (a screenshot script, not a test)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(args.width, height)
        time.sleep(0.5)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        _shrink(args.out)
        print(f"saved {args.out} ({args.width}x{height})")
    finally:
        if driver is not None:
            driver.quit()
        swarm.down(sw)
        shutil.rmtree(sw.parent, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
