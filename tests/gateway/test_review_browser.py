"""The review page in a real headless browser (Debian's chromium, driven by selenium): two
officers sign in with their tokens, read a run whose file name is hostile HTML, and vote
through the forms, with no JavaScript on the page."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.gateway.reviewworld import HOSTILE, TOKENS, ServedGateway, write_held_run
from tests.helpers import requires

try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait
except ImportError:  # the dev extra is not installed: the marker below says so
    webdriver = None

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = requires(
    webdriver is not None and CHROMIUM and CHROMEDRIVER,
    "the browser test needs selenium (dev extra) and Debian's chromium and chromium-driver",
)


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def arrive(browser, condition) -> None:
    """Wait for the page a click led to: a click on a form's button returns before the browser
    has loaded the answer (seen: the next assertion read the page before)."""
    WebDriverWait(browser, 15).until(condition, browser.page_source[-1500:])


def sign_in(browser, url: str, name: str) -> None:
    browser.get(f"{url}/review")
    assert browser.current_url.endswith("/review/login")
    browser.find_element(By.ID, "token").send_keys(TOKENS[name])
    browser.find_element(By.ID, "sign-in").click()
    arrive(browser, expected_conditions.presence_of_element_located((By.ID, "officer")))
    assert browser.find_element(By.ID, "officer").text == name


def approve(browser, section, reason: str) -> None:
    """Approve the file of `section` with `reason`, and wait for the page that says so."""
    section.find_element(By.TAG_NAME, "textarea").send_keys(reason)
    section.find_element(By.CSS_SELECTOR, "button[value=approve]").click()
    arrive(browser, expected_conditions.presence_of_element_located((By.ID, "notice")))


def file_section(browser, sha256: str):
    return browser.find_element(By.ID, f"file-{sha256}")


async def test_two_officers_vote_in_a_browser(nats_server, admin_bus, tmp_path, browser):
    from tests.gateway.reviewworld import officer_config

    held = await write_held_run(admin_bus)
    config = officer_config(tmp_path / "officers")
    with ServedGateway(nats_server, config) as served:

        def first_officer() -> None:
            sign_in(browser, served.url, "officer-1")
            browser.find_element(By.LINK_TEXT, held.run_id).click()
            dump = file_section(browser, held.dump)
            # The hostile name is text on the page, not markup: no script ran, no image loaded.
            assert dump.find_element(By.CLASS_NAME, "name").text == HOSTILE
            with pytest.raises(NoAlertPresentException):
                _ = browser.switch_to.alert.text
            assert not browser.find_elements(By.TAG_NAME, "script")
            assert browser.find_element(By.ID, "granted").text == "patients"
            approve(browser, dump, "synthetic rows, checked")
            assert browser.find_element(By.ID, "notice").text == "Your approval is recorded."
            mine = file_section(browser, held.dump).find_element(By.CLASS_NAME, "your-vote")
            assert "approve" in mine.text
            browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
            arrive(browser, expected_conditions.url_contains("/review/login"))

        def second_officer() -> str:
            sign_in(browser, served.url, "officer-2")
            browser.get(f"{served.url}/review/{held.run_id}")
            dump = file_section(browser, held.dump)
            seen = dump.text
            approve(browser, dump, "agreed")
            assert browser.find_element(By.ID, "notice").text == "Your approval is recorded."
            return seen

        # selenium blocks: the browser runs in a thread while this loop keeps serving NATS.
        await asyncio.to_thread(first_officer)
        seen = await asyncio.to_thread(second_officer)
    assert "1 of 2 approvals recorded" in seen
    assert "officer-1" not in seen and "synthetic rows" not in seen
    votes = [
        (s.event.payload.officer, s.event.payload.decision)
        for s in await admin_bus.read_run(held.run_id)
        if s.event.type == "review.recorded"
    ]
    assert votes == [("officer-1", "approve"), ("officer-2", "approve")]
