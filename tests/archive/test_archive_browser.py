"""The web page in headless Debian Chromium (selenium + /usr/bin/chromedriver): upload, search, detail view.
Keeps screenshots in test-artifacts/ (gallery and detail view)."""
import shutil
import tempfile
from pathlib import Path

import pytest

from .conftest import ARTIFACTS, consistency
from nodecode.cli import main

CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not (Path(CHROMEDRIVER).exists() and Path(CHROMIUM).exists()),
                                reason="Debian chromium / chromium-driver not installed")


@pytest.fixture
def browser():
    selenium = pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    profile = tempfile.mkdtemp(prefix="nodecode-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    assert selenium
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver, cond, seconds: float = 120) -> None:
    """A form submit navigates asynchronously: wait (bounded) until `cond(driver)` holds, then go on."""
    from selenium.webdriver.support.ui import WebDriverWait
    WebDriverWait(driver, seconds).until(cond)


def loaded(driver, css) -> list:
    """The images matching css, after checking each one actually decoded in the browser."""
    from selenium.webdriver.support.ui import WebDriverWait
    els = driver.find_elements("css selector", css)
    WebDriverWait(driver, 90).until(lambda d: all(d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", e) for e in els))
    return els


def test_upload_search_detail(tmp_path, photos, server_factory, browser):
    ar = tmp_path / "ar"
    assert main(["archive", "init", str(ar)]) == 0
    s = server_factory(ar)
    d = browser
    d.get(s.url + "/")
    assert "0 images" in d.find_element("id", "stats").text
    for name in ("photo0.jpg", "photo1.jpg", "photo2.jpg"):
        d.get(s.url + "/")
        d.find_element("id", "file").send_keys(str(photos / name))
        d.find_element("id", "upload").click()
        wait_for(d, lambda d: d.current_url.startswith(s.url + "/view/"))  # redirected to the new image's page
        assert d.find_element("id", "name").text == name
    # detail view: labels with scores, areas, decoded image and segmentation overlay
    labels = [r.text for r in d.find_elements("css selector", "#labels tr")]
    assert len(labels) == 5 and all(len(t.split()) >= 2 for t in labels)
    assert d.find_elements("css selector", "#areas tr")
    assert len(loaded(d, "#image, #overlay")) == 2
    assert len(loaded(d, "#similar img")) == 2
    ARTIFACTS.mkdir(exist_ok=True)
    d.save_screenshot(str(ARTIFACTS / "archive-detail.png"))
    top = labels[0].rsplit(" ", 1)[0]
    # search box -> gallery of thumbnails decoded on demand
    d.get(s.url + "/")
    box = d.find_element("id", "q")
    box.send_keys(top)
    d.find_element("id", "search").click()
    wait_for(d, lambda d: "/search" in d.current_url or "q=" in d.current_url)
    assert f"Results for “{top}”" in d.find_element("id", "heading").text
    tiles = loaded(d, "#gallery img")
    assert 1 <= len(tiles) <= 3
    d.save_screenshot(str(ARTIFACTS / "archive-search.png"))
    d.get(s.url + "/")
    assert len(loaded(d, "#gallery img")) == 3 and "3 images" in d.find_element("id", "stats").text
    d.save_screenshot(str(ARTIFACTS / "archive-gallery.png"))
    assert consistency(ar)["images"] == 3
