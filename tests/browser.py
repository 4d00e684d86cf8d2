"""Headless Chromium from Debian's packages (`chromium`, `chromium-driver`),
driven with selenium. Nothing is downloaded at run time: selenium is given
the chromedriver and the browser it runs, so its driver manager never looks
anything up. `bash .ci/run` installs both when they are missing."""

from __future__ import annotations

import os
import shutil
import time

import pytest

BROWSER_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)


def _which(names, env) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    return next((path for path in map(shutil.which, names) if path), None)


def chromium(width: int = 1400, height: int = 1000):
    """A started headless Chromium (quit it when done). Fails the test when
    Chromium is missing, unless P2PNET_NO_BROWSER=1 says to skip."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:  # pragma: no cover
        pytest.fail("selenium is missing: install the dev extras (bash scripts/bootstrap.sh dev)")
    browser, driver = _which(BROWSER_NAMES, "P2PNET_CHROMIUM"), _which(DRIVER_NAMES, "P2PNET_CHROMEDRIVER")
    if not browser or not driver:
        if os.environ.get("P2PNET_NO_BROWSER") == "1":
            pytest.skip("no chromium/chromedriver here (P2PNET_NO_BROWSER=1)")
        pytest.fail("chromium and chromedriver are missing: apt-get install chromium chromium-driver "
                    "(bash .ci/run does), or set P2PNET_NO_BROWSER=1 to skip the browser tests")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def wait_until(cond, timeout_s: float, what: str, poll_s: float = 0.2):
    """Poll ``cond()`` until it returns something true (returned); fail after
    ``timeout_s``. A poll that read an element the page replaced meanwhile
    (the dashboard re-renders its tables on every refresh) counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = cond()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)


def console_problems(driver) -> list[dict]:
    """Console entries at level SEVERE (errors, failed loads, CSP refusals) or
    the page's own warnings about a part it could not draw."""
    return [entry for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" or "dashboard:" in entry.get("message", "")]
