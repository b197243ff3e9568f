"""The demo page (/) and the API docs (/docs, /redoc) in a real headless browser: Debian's chromium driven by
chromium-driver through selenium. The browser resolves no host but 127.0.0.1, so anything that needed a CDN
would fail here exactly as it would offline."""

from __future__ import annotations

import json
import re
import shutil
from urllib.parse import urlsplit

import pytest

from tests.service.conftest import shape_image

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (`make system-deps` installs "
                                       "them: apt-get install chromium chromium-driver)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,1000",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # the DevTools network log
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def requests_made(driver) -> list[tuple[str, str | None]]:
    """(URL, blocked reason) of every request the browser made since the last call, from the DevTools network
    log: what the page tried to fetch, and whether the browser itself refused it (e.g. by Content-Security-Policy)."""
    sent: dict[str, str] = {}
    blocked: dict[str, str] = {}
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message["method"] == "Network.requestWillBeSent":
            sent[params["requestId"]] = params["request"]["url"]
        elif message["method"] == "Network.loadingFailed" and params.get("blockedReason"):
            blocked[params["requestId"]] = params["blockedReason"]
    return [(url, blocked.get(rid)) for rid, url in sent.items()]


def open_page(driver, url: str) -> None:
    driver.get_log("performance")  # forget the previous page's requests
    driver.get(url)


def assert_only_local(driver, server) -> None:
    """Nothing left this machine: every request went to the server, or the browser blocked it before sending."""
    origin = urlsplit(server.url).netloc
    made = requests_made(driver)
    assert any(urlsplit(url).netloc == origin for url, _ in made), "the network log is empty: the check is void"
    foreign = [url for url, reason in made if urlsplit(url).scheme in ("http", "https")
               and urlsplit(url).netloc != origin and reason is None]
    assert not foreign, f"the page fetched external URLs: {foreign}"


def test_demo_page_classifies_an_uploaded_picture(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    picture = tmp_path / "red-circle.png"
    shape_image("red", "circle").save(picture)
    open_page(browser, server.url + "/")
    info = wait_for(browser, lambda d: "fingerprint" in d.find_element(By.ID, "model-info").text
                    and d.find_element(By.ID, "model-info"))
    assert "128 dimensions" in info.text, "the page shows the model's info"
    browser.find_element(By.ID, "file").send_keys(str(picture))
    wait_for(browser, lambda d: d.find_element(By.ID, "preview").get_attribute("src").startswith("blob:"))
    labels = browser.find_element(By.ID, "labels")
    labels.clear()
    labels.send_keys("blue square\nred circle")
    browser.find_element(By.ID, "classify").click()
    rows = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .result"))
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert [r.find_element(By.CSS_SELECTOR, ".label").text for r in rows] == ["red circle", "blue square"]
    top_score = float(rows[0].find_element(By.CSS_SELECTOR, ".score").text.rstrip("%"))
    assert top_score > 50
    bar = rows[0].find_element(By.CSS_SELECTOR, ".fill").get_attribute("style")  # e.g. "width: 97.3%;"
    assert abs(float(re.search(r"width:\s*([\d.]+)%", bar).group(1)) - top_score) < 0.05, "bar as long as score"
    assert_only_local(browser, server)


def test_demo_page_shows_errors(server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server.url + "/")
    browser.find_element(By.ID, "classify").click()
    error = wait_for(browser, lambda d: d.find_element(By.ID, "error").is_displayed()
                     and d.find_element(By.ID, "error"))
    assert "image" in error.text


def test_swagger_docs_render_offline(server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server.url + "/docs")
    ui = wait_for(browser, lambda d: "/embed/image" in d.find_element(By.ID, "swagger-ui").text
                  and d.find_element(By.ID, "swagger-ui"))
    for path in ("/embed/text", "/classify", "/labelsets/{name}", "/v1/embeddings", "/v1/models"):
        assert path in ui.text
    assert_only_local(browser, server)


def test_redoc_renders_offline(server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server.url + "/redoc")
    wait_for(browser, lambda d: "Embed images" in d.find_element(By.TAG_NAME, "body").text)
    assert "Create embeddings (OpenAI-compatible)" in browser.find_element(By.TAG_NAME, "body").text
    assert_only_local(browser, server)
