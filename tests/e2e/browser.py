"""A real headless Chromium driven by Selenium through Debian's chromedriver.

Nothing is downloaded: the browser and its driver are the system's (`.ci/run` installs
Debian's `chromium` and `chromium-driver`). Where they are missing the browser tests skip,
unless FACEMARGIN_REQUIRE_BROWSER is set (CI sets it), where a missing browser fails."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

# Chromium phones home at start (component updates, sync, field trials); on a closed network
# each attempt is a refused connection, so they are all switched off.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--window-size=1280,900",
    # A fake camera (a test pattern) that needs no permission prompt, for the page's camera.
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
)


def _binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator:
    chromium = _binary("chromium", "chromium-browser")
    driver_path = _binary("chromedriver")
    if chromium is None or driver_path is None:
        message = "headless browser tests need Debian's chromium and chromium-driver"
        if os.environ.get("FACEMARGIN_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="facemargin-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    # The DevTools network log: what the page asked for, and what the browser refused to send.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def foreign_requests(driver, origin: str) -> list[str]:
    """Every request the page sent anywhere but `origin` since the last call: an air-gapped
    page sends none. A request the page's Content-Security-Policy blocked never left the
    browser and is not counted."""
    host = urlsplit(origin).netloc
    asked: dict[str, str] = {}
    blocked: set[str] = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            asked[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.add(params["requestId"])
    return [
        url
        for request_id, url in asked.items()
        if request_id not in blocked
        # chrome:// and data: are the browser's own; only the network counts.
        and urlsplit(url).scheme in ("http", "https", "ws", "wss")
        and urlsplit(url).netloc != host
    ]
