"""The review page end to end in the system's headless Chromium (Debian's ``chromium`` and
``chromium-driver``; Selenium never downloads a browser or driver): sign in, open a batch,
release one row and reject another, then check the ledger and the data cleared for training."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ui import TOKEN, copy_of_scan

from pipeline.ledger import RowStatus
from pipeline.review import accepted_data
from pipeline.ui import create_app

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = next((Path(p) for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or not CHROMEDRIVER.exists(),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver; .ci/run does)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, object]]:
    """The app on a free loopback port, run by uvicorn in a background thread."""
    import uvicorn

    settings = copy_of_scan(tmp_path_factory, "ui-browser")
    app = create_app(settings, TOKEN)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}", app
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(argument)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not fetch a browser or driver
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def lands_on(browser, url: str, seconds: float = 10.0) -> bool:
    """Whether the browser reaches ``url``: a click returns before the navigation it starts has
    finished, so reading ``current_url`` at once can still see the page before (CI saw it once)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(browser, seconds).until(expected_conditions.url_to_be(url))
    except TimeoutException:
        return False
    return True


def test_a_steward_releases_one_row_and_rejects_another_in_the_browser(served, browser):
    from selenium.webdriver.common.by import By

    base, app = served
    ledger = app.state.ledger
    (batch,) = ledger.list_batches()

    browser.get(base + "/")
    assert "/sign-in" in browser.current_url
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, ".signin button[type=submit]").click()
    assert lands_on(browser, base + "/"), browser.current_url
    assert batch.file in browser.find_element(By.TAG_NAME, "main").text

    browser.find_element(By.LINK_TEXT, batch.id).click()
    assert lands_on(browser, f"{base}/batches/{batch.id}"), browser.current_url
    links = browser.find_elements(By.CSS_SELECTOR, "main table a.id")
    assert len(links) == batch.quarantined
    released, rejected = (link.get_attribute("href").rsplit("/", 1)[1] for link in links[:2])

    # release the most suspect row from its own page, after looking at its neighbours
    links[0].click()
    assert "trusted #1" in browser.find_element(By.CSS_SELECTOR, "table.compare").text
    browser.find_element(By.ID, "by").send_keys("alice")
    browser.find_element(By.ID, "reason").send_keys("income confirmed with the lender")
    browser.find_element(By.CSS_SELECTOR, "button.release").click()
    assert lands_on(browser, f"{base}/rows/{released}"), browser.current_url
    assert f"Released 1 row(s): {released}" in browser.find_element(By.CSS_SELECTOR, ".flash.ok").text

    # reject the next one from the batch page: tick it, say who and why
    browser.find_element(By.LINK_TEXT, f"batch {batch.id}").click()
    browser.find_element(By.CSS_SELECTOR, f"input[type=checkbox][value='{rejected}']").click()
    assert browser.find_element(By.ID, "by").get_attribute("value") == "alice"  # remembered for the session
    by = browser.find_element(By.ID, "by")
    by.clear()
    by.send_keys("bob")
    browser.find_element(By.ID, "reason").send_keys("ratios impossible for this applicant")
    browser.find_element(By.CSS_SELECTOR, "button.reject").click()
    assert lands_on(browser, f"{base}/batches/{batch.id}"), browser.current_url
    assert f"Rejected 1 row(s): {rejected}" in browser.find_element(By.CSS_SELECTOR, ".flash.ok").text
    assert "CSP" not in " ".join(str(entry) for entry in browser.get_log("browser"))

    for row_id, status, who, why in [
        (released, RowStatus.RELEASED, "alice", "income confirmed with the lender"),
        (rejected, RowStatus.REJECTED, "bob", "ratios impossible for this applicant"),
    ]:
        record = ledger.get_row(row_id)
        assert (record.status, record.review.by, record.review.reason) == (status, who, why)
    assert ledger.verify() == []

    cleared = accepted_data(app.state.settings, ledger, batch.dataset)
    mine = set(zip(cleared["poisonguard_batch_id"], cleared["row_number"]))
    assert (batch.id, ledger.get_row(released).row_number) in mine
    assert (batch.id, ledger.get_row(rejected).row_number) not in mine
    assert len(cleared) == batch.accepted + 1
