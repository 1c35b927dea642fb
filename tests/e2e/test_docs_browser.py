"""/docs and /redoc render in a real browser with no network beyond the service itself."""

from __future__ import annotations

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.browser import browser, foreign_requests  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


def _operations(server_url: str) -> set[str]:
    spec = httpx.get(f"{server_url}/openapi.json").json()
    return {path for path in spec["paths"]}


def test_swagger_ui_renders_every_operation_offline(server, browser) -> None:  # noqa: F811
    browser.get(f"{server.url}/docs")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    )
    shown = {
        e.get_attribute("data-path")
        for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
    }
    assert _operations(server.url) <= shown
    # Swagger UI shows a red box when it cannot read the document (e.g. OpenAPI 3.1 in 4.x).
    assert not browser.find_elements(By.CSS_SELECTOR, ".errors-wrapper")
    assert foreign_requests(browser, server.url) == []


def test_redoc_renders_offline(server, browser) -> None:  # noqa: F811
    browser.get(f"{server.url}/redoc")
    WebDriverWait(browser, 30).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']")
    )
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "/verify" in text and "/identify" in text
    assert foreign_requests(browser, server.url) == []
