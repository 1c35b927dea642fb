"""The web page at /ui in a real headless Chromium against a real server and real CFP photos:
verify a same-person and a different-person pair, a bad file, enrol, identify, the gallery
(open, delete a template, delete the subject), the model screen, the keyboard, API keys.

Screenshots of each screen go to $FACEMARGIN_UI_SCREENSHOTS when set (the README's, in
docs/ui/, are made that way), else to the test's temporary folder. The photos are CFP's, which
the project does not redistribute, so the page's own "pixelate photos on screen" is on while
they are taken (and the test checks that it pixelates)."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.alert import Alert
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.browser import browser, foreign_requests  # noqa: F401 (fixture)
from tests.e2e.conftest import gallery_env, running
from tests.e2e.test_api import CFP, photo

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CFP.is_dir(), reason=f"CFP photos not found at {CFP}"),
]

WAIT_S = 60


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("FACEMARGIN_UI_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("ui-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(driver, path: Path) -> None:
    """The whole page, not only the viewport (DevTools' capture beyond the viewport)."""
    width, height = driver.execute_script(
        "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def wait_for(driver, css: str, timeout: float = WAIT_S):
    try:
        return WebDriverWait(driver, timeout).until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, css))
        )
    except TimeoutException:
        shown = driver.execute_script(
            "const s = document.querySelector('section:not([hidden])'); return s && s.innerText"
        )
        raise AssertionError(f"{css} did not appear; the screen shows:\n{shown}") from None


def text_of(driver, css: str) -> str:
    return wait_for(driver, css).text


def open_tab(driver, name: str) -> None:
    driver.find_element(By.ID, f"tab-{name}").click()
    wait_for(driver, f"#{name}")


def choose(driver, css: str, *paths: Path) -> None:
    driver.find_element(By.CSS_SELECTOR, css).send_keys("\n".join(str(p) for p in paths))


def fresh_result(driver, css: str) -> None:
    driver.execute_script(f"document.querySelector('{css}').replaceChildren()")


def load_page(driver, url: str) -> None:
    driver.get(f"{url}/ui/")
    WebDriverWait(driver, WAIT_S).until(
        lambda d: d.execute_script("return document.body.dataset.ready === 'true'")
    )


def pixelate(driver) -> None:
    box = driver.find_element(By.ID, "pixelate")
    if not box.is_selected():
        box.click()


def distinct_colours(driver, canvas_id: str) -> int:
    """Distinct colours in the canvas's middle row: a photo has hundreds, blocks a few dozen."""
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]); const g = c.getContext('2d');"
        "const row = g.getImageData(0, Math.floor(c.height / 2), c.width, 1).data;"
        "const seen = new Set(); for (let i = 0; i < row.length; i += 4)"
        " seen.add(row[i] + ',' + row[i + 1] + ',' + row[i + 2]); return seen.size",
        canvas_id,
    )


def test_verify_enrol_identify_and_manage_the_gallery(server, browser, shots, tmp_path):  # noqa: F811
    d = browser
    load_page(d, server.url)
    choose(d, "#verify-image1", photo(1, 1))
    WebDriverWait(d, WAIT_S).until(lambda d: distinct_colours(d, "verify-image1-canvas") > 0)
    plain = distinct_colours(d, "verify-image1-canvas")
    pixelate(d)

    # Verify: same person, then two people; faces drawn over both photos.
    choose(d, "#verify-image1", photo(1, 1))
    choose(d, "#verify-image2", photo(1, 2))
    d.find_element(By.ID, "verify-submit").click()
    assert text_of(d, "#verify-decision") == "Same person"
    similarity = float(text_of(d, "#verify-similarity"))
    threshold = text_of(d, "#verify-threshold")
    assert "FAR" in threshold and "calibrated" in threshold
    assert similarity >= float(threshold.split()[1])
    assert d.execute_script("return document.getElementById('verify-image2-canvas').width") > 0
    assert distinct_colours(d, "verify-image1-canvas") < plain / 3  # pixelated, marks drawn
    screenshot(d, shots / "verify.png")

    fresh_result(d, "#verify-result")
    choose(d, "#verify-image2", photo(2, 1))
    d.find_element(By.ID, "verify-submit").click()
    assert text_of(d, "#verify-decision") == "Different people"
    assert float(text_of(d, "#verify-similarity")) < similarity

    # A bad file: the API's error envelope, readable, naming the field.
    not_a_photo = tmp_path / "notes.jpg"
    not_a_photo.write_text("this is not a photo")
    fresh_result(d, "#verify-result")
    choose(d, "#verify-image2", not_a_photo)
    d.find_element(By.ID, "verify-submit").click()
    error = text_of(d, "#verify-result .error")
    assert "unsupported_media_type" in error or "invalid_image" in error
    assert "image2" in error and "request id" in error
    screenshot(d, shots / "verify-error.png")

    # Enrol three photos and the bad file: each photo's own result.
    open_tab(d, "enroll")
    d.find_element(By.ID, "enroll-subject").send_keys("cfp-001")
    d.find_element(By.ID, "enroll-name").send_keys("CFP person 1")
    choose(d, "#enroll-images", photo(1, 1), photo(1, 3), photo(1, 4), not_a_photo)
    d.find_element(By.ID, "enroll-submit").click()
    assert "3 enrolled, 1 rejected" in text_of(d, "#enroll-summary")
    rows = d.find_elements(By.CSS_SELECTOR, "#enroll-photos tbody tr")
    assert [r.find_element(By.TAG_NAME, "code").text for r in rows][:3] == ["enrolled"] * 3
    assert rows[3].find_element(By.TAG_NAME, "code").text in (
        "unsupported_media_type",
        "invalid_image",
    )
    screenshot(d, shots / "enroll.png")

    # Identify: the enrolled person by another photo, and a stranger.
    open_tab(d, "identify")
    choose(d, "#identify-image", photo(1, 5))
    d.find_element(By.ID, "identify-submit").click()
    assert text_of(d, "#identify-decision-0") == "Face 1: cfp-001"
    assert "FPIR" in text_of(d, "#identify-threshold")
    screenshot(d, shots / "identify.png")
    fresh_result(d, "#identify-result")
    choose(d, "#identify-image", photo(2, 1))
    d.find_element(By.ID, "identify-submit").click()
    assert text_of(d, "#identify-decision-0") == "Face 1: unknown"

    # Gallery: the subject with its three templates; delete one, then the subject.
    open_tab(d, "gallery")
    row = wait_for(d, "#gallery-table tr[data-subject='cfp-001']")
    assert row.find_elements(By.TAG_NAME, "td")[2].text == "3"
    row.find_element(By.TAG_NAME, "button").click()
    wait_for(d, "#subject-detail")
    screenshot(d, shots / "gallery.png")
    d.find_element(By.CSS_SELECTOR, "#subject-detail tbody button").click()
    WebDriverWait(d, WAIT_S).until(ec.alert_is_present())
    Alert(d).accept()
    assert "Deleted 1 template(s) of cfp-001" in text_of(d, "#delete-result")
    # The list is redrawn after the delete: a row read mid-redraw is stale, not wrong.
    WebDriverWait(d, WAIT_S, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: (
            d.find_element(By.CSS_SELECTOR, "#gallery-table tr[data-subject='cfp-001']")
            .find_elements(By.TAG_NAME, "td")[2]
            .text
            == "2"
        )
    )
    assert httpx.get(f"{server.url}/subjects/cfp-001").json()["template_count"] == 2
    wait_for(d, "#subject-detail")
    d.find_element(By.ID, "delete-subject").click()
    WebDriverWait(d, WAIT_S).until(ec.alert_is_present())
    Alert(d).accept()
    # The first delete's message is still on screen until the second's replaces it.
    WebDriverWait(d, WAIT_S, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: "Deleted 2 template(s) of cfp-001" in d.find_element(By.ID, "delete-result").text
    )
    assert httpx.get(f"{server.url}/subjects/cfp-001").status_code == 404

    # Model and service: the served model's id, its card figures, readiness.
    open_tab(d, "service")
    info = httpx.get(f"{server.url}/info").json()
    assert text_of(d, "#service-model-id") == info["model"]["model_id"]
    assert text_of(d, "#service-ready").startswith("Ready")
    assert "cfp-ff" in text_of(d, "#service-validation")
    assert "threshold" in text_of(d, "#service-thresholds")
    screenshot(d, shots / "service.png")

    assert foreign_requests(d, server.url) == []


def test_keyboard_moves_between_screens_and_a_phone_screen_fits(server, browser, shots):  # noqa: F811
    d = browser
    load_page(d, server.url)
    d.find_element(By.ID, "tab-verify").send_keys(Keys.ARROW_RIGHT)
    assert d.switch_to.active_element.get_attribute("id") == "tab-enroll"
    assert d.find_element(By.ID, "enroll").is_displayed()
    assert not d.find_element(By.ID, "verify").is_displayed()
    d.switch_to.active_element.send_keys(Keys.END)
    assert d.switch_to.active_element.get_attribute("id") == "tab-service"
    d.switch_to.active_element.send_keys(Keys.HOME)
    assert d.find_element(By.ID, "verify").is_displayed()

    # A phone's screen (DevTools' device emulation: a window cannot be made that narrow).
    d.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    try:
        load_page(d, server.url)
        pixelate(d)
        sizes = d.execute_script(
            "const e = document.documentElement; return [e.scrollWidth, e.clientWidth]"
        )
        assert sizes[1] == 390 and sizes[0] <= sizes[1], sizes  # nothing wider than the screen
        choose(d, "#verify-image1", photo(3, 1))
        choose(d, "#verify-image2", photo(3, 2))
        d.find_element(By.ID, "verify-submit").click()
        assert text_of(d, "#verify-decision") == "Same person"
        screenshot(d, shots / "verify-phone.png")
    finally:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_with_api_keys_the_page_asks_for_the_key(browser, tmp_path):  # noqa: F811
    key = "ui-test-key"
    digest = hashlib.sha256(key.encode()).hexdigest()
    env = gallery_env(tmp_path / "data", FACEMARGIN_API_KEYS=f"ui:{digest}")
    with running(env) as server:
        d = browser
        load_page(d, server.url)  # the page itself needs no key
        d.execute_script("sessionStorage.clear()")
        load_page(d, server.url)
        open_tab(d, "service")
        error = text_of(d, "#service-info .error")
        assert "unauthorized" in error and "Enter an API key" in error
        d.find_element(By.ID, "api-key").send_keys(key)
        d.find_element(By.ID, "service-refresh").click()
        assert text_of(d, "#service-model-id")
        assert d.execute_script("return sessionStorage.getItem('facemargin.apiKey')") == key
        assert d.execute_script("return localStorage.length") == 0  # never beyond the tab


def test_the_camera_gives_a_photo_and_the_gallery_pages(server, browser):  # noqa: F811
    d = browser
    load_page(d, server.url)
    d.find_element(By.ID, "verify-image1-camera").click()
    WebDriverWait(d, WAIT_S).until(
        lambda d: d.execute_script(
            "const v = document.getElementById('camera-video'); return v.videoWidth > 0"
        )
    )
    d.find_element(By.ID, "camera-take").click()
    WebDriverWait(d, WAIT_S).until(
        lambda d: (
            d.execute_script("return document.getElementById('verify-image1-canvas').width") > 0
        )
    )
    assert "camera" in d.find_element(By.CSS_SELECTOR, "#verify .photo-picker .note").text
    assert not d.find_element(By.ID, "camera").is_displayed()  # the dialog closed

    # 25 subjects: two pages of 20, the second reached with "Next page".
    for person in range(101, 126):
        r = httpx.post(
            f"{server.url}/enroll",
            data={"subject_id": f"page-{person}"},
            files={"images": ("a.jpg", photo(person, 1).read_bytes())},
            timeout=60,
        )
        assert r.status_code == 200, r.text
    open_tab(d, "gallery")
    total = httpx.get(f"{server.url}/subjects", params={"limit": 1}).json()["total"]
    assert text_of(d, "#gallery-position") == f"1–20 of {total}"
    first = {
        e.get_attribute("data-subject")
        for e in d.find_elements(By.CSS_SELECTOR, "#gallery-table tbody tr")
    }
    d.find_element(By.ID, "gallery-next").click()
    WebDriverWait(d, WAIT_S).until(
        lambda d: d.find_element(By.ID, "gallery-position").text.startswith("21–")
    )
    second = {
        e.get_attribute("data-subject")
        for e in d.find_elements(By.CSS_SELECTOR, "#gallery-table tbody tr")
    }
    assert len(first) == 20 and second and not first & second
    assert d.find_element(By.ID, "gallery-prev").is_enabled()
    assert not d.find_element(By.ID, "gallery-next").is_enabled() or total > 40
