"""The Space in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, installed by .ci/run):
load the page, upload an example, click Analyze, and check that the curves and the attention maps rendered.
A full-page screenshot is saved under the pytest tmp dir (its path is printed)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from test_space import EXAMPLES, launch, load_app, results_folder, tiny_models  # noqa: F401 - fixtures

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_models):  # noqa: F811 - the fixture imported from test_space
    app = load_app()
    demo = app.build_demo(tiny_models)
    url = launch(demo)
    yield url
    demo.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pytest.importorskip("selenium", reason="the browser test needs selenium (the 'test' extra)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1800",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium_profile')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _rendered(driver, selector: str) -> bool:
    """An <img>, <svg> or <canvas> inside ``selector`` that has loaded and has a non-zero size."""
    return bool(driver.execute_script(
        """
        const root = document.querySelector(arguments[0]);
        if (!root) return false;
        for (const el of root.querySelectorAll('img, svg, canvas')) {
            const box = el.getBoundingClientRect();
            const loaded = el.tagName !== 'IMG' || (el.complete && el.naturalWidth > 0);
            if (loaded && box.width > 0 && box.height > 0) return true;
        }
        return false;
        """, selector))


def _wait(driver, condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _screenshot(driver, path: Path) -> Path:
    """A full-page PNG through the DevTools protocol (the viewport alone if that is unavailable)."""
    import base64

    try:
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(shot["data"]))
    except Exception:  # noqa: BLE001
        driver.save_screenshot(str(path))
    return path


def test_upload_analyze_and_see_the_plots(server, browser, tmp_path_factory):
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#analyze-btn"), 60, "the app to load")
    assert "hf_isi" in browser.title

    # upload an example image through the Image component's file input
    example = EXAMPLES / "astronaut.jpg"
    file_input = browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]")
    file_input.send_keys(str(example))
    _wait(browser, lambda: _rendered(browser, "#input-image"), 30, "the uploaded image preview")

    browser.find_element(By.CSS_SELECTOR, "#analyze-btn").click()
    _wait(browser, lambda: _rendered(browser, "#curves-plot") and _rendered(browser, "#cls-map")
          and _rendered(browser, "#patch-map"), 90, "the curves and the attention maps")

    # the prediction and the status text arrived too, and no error toast is shown
    _wait(browser, lambda: "predicts" in browser.find_element(By.CSS_SELECTOR, "#status").text, 30,
          "the status text")
    assert "tiny-vit" in browser.find_element(By.CSS_SELECTOR, "#status").text
    assert "Layer 1 of 5" in browser.find_element(By.CSS_SELECTOR, "#map-caption").text
    assert not browser.find_elements(By.CSS_SELECTOR, ".toast-body.error")
    sizes = browser.execute_script(
        "return ['#curves-plot', '#cls-map', '#patch-map'].map(s => {"
        "  const img = document.querySelector(s + ' img'); return img ? [img.naturalWidth, img.naturalHeight] : null; })")
    assert sizes[0] == [1300, 700] and sizes[1] == [320, 320] and sizes[2] == [320, 320], sizes

    path = _screenshot(browser, tmp_path_factory.mktemp("screenshots") / "space_single_image.png")
    print(f"\nscreenshot: {path}")
    assert path.stat().st_size > 10_000


def test_errors_show_a_friendly_message(server, browser, tmp_path):
    """Analyze without an image, then with a non-image: the error toasts carry the friendly messages."""
    from selenium.webdriver.common.by import By

    def body() -> str:
        return browser.find_element(By.TAG_NAME, "body").text

    browser.get(server)
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#analyze-btn"), 60, "the app to load")
    browser.find_element(By.CSS_SELECTOR, "#analyze-btn").click()  # no image yet
    _wait(browser, lambda: "Please upload an image" in body(), 30, "the 'Please upload an image' message")

    not_an_image = tmp_path / "holiday.png"
    not_an_image.write_text("this is text, not a PNG")
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(not_an_image))
    time.sleep(1)
    browser.find_element(By.CSS_SELECTOR, "#analyze-btn").click()
    _wait(browser, lambda: "'holiday.png' is not an image" in body(), 30, "the 'is not an image' message")
    assert "Traceback" not in body()


def test_dataset_results_tab(server, browser, results_folder, tmp_path_factory):  # noqa: F811
    """The second tab: type a results folder, load it, see the comparison and the phases table."""
    from selenium.webdriver.common.by import By

    browser.get(server)
    _wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#analyze-btn"), 60, "the app to load")
    tab = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "Dataset results")
    tab.click()
    _wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, "#results-source textarea").is_displayed(), 30,
          "the Dataset results tab")
    browser.find_element(By.CSS_SELECTOR, "#results-source textarea").send_keys(str(results_folder[0]))
    browser.find_element(By.CSS_SELECTOR, "#load-results-btn").click()
    _wait(browser, lambda: _rendered(browser, "#comparison-plot") and _rendered(browser, "#panels-plot"), 60,
          "the comparison plots")
    _wait(browser, lambda: "tiny-deit" in browser.find_element(By.CSS_SELECTOR, "#phases-table").text, 30,
          "the phases table")
    assert "tiny-vit" in browser.find_element(By.CSS_SELECTOR, "#phases-table").text
    path = _screenshot(browser, tmp_path_factory.mktemp("screenshots") / "space_dataset_results.png")
    print(f"\nscreenshot: {path}")

    tab = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if b.text == "About")
    tab.click()
    _wait(browser, lambda: "Information Scrambling Index" in browser.find_element(By.CSS_SELECTOR, "#about").text,
          30, "the About tab")
