"""Headless Chromium (Debian's chromium + chromedriver, driven through WebDriver by selenium) against the real
server: log in, open a match (location, deadline, contacts, local times), get a form error in words, record an
action, see the worklist update and page; and the public studies page passes axe-core (WCAG 2.2 AA) with no
serious or critical violation."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from screener.settings import Settings
from screener.web import serve

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PATIENT_A = "MRN-A-0042"
PATIENT_B = "MRN-B-0077"


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="screener-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def test_nurse_logs_in_opens_a_match_records_an_action_and_sees_the_worklist_update(seeded: Any, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20)
    with serve(Settings(web_port=0), seeded) as handle:
        browser.get(f"{handle.url}/worklist")
        wait.until(ec.url_contains("/login"))  # no session: sent to the login page

        browser.find_element(By.ID, "username").send_keys("nina")
        browser.find_element(By.ID, "password").send_keys("wrong")
        browser.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.ID, "login-failed")))
        browser.find_element(By.ID, "username").send_keys("nina")
        browser.find_element(By.ID, "password").send_keys("nina-long-password")
        browser.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.ID, "worklist")))
        table = browser.find_element(By.ID, "worklist").text
        assert PATIENT_A in table and PATIENT_B not in table  # only her team's study
        assert "Acute" in table  # a 6-hour window study is flagged urgent
        rows = browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
        assert [r.get_attribute("data-stage") for r in rows] == ["new"]

        rows[0].find_element(By.CSS_SELECTOR, "a.open").click()
        wait.until(ec.presence_of_element_located((By.ID, "criteria")))
        assert PATIENT_A not in browser.current_url and "/matches/" in browser.current_url
        assert browser.find_element(By.ID, "patient").text == PATIENT_A
        verify = browser.find_element(By.ID, "to-verify").text
        assert "Stroke within 6h" in verify and "onset time not recorded" in verify
        highlighted = browser.find_elements(By.CSS_SELECTOR, "#criteria tr.verify")
        assert len(highlighted) == 1 and "to verify" in highlighted[0].text
        # What to do next: where the patient is, by when, and who to call; times in Europe/London.
        assert browser.find_element(By.ID, "location").text.startswith("Stroke unit, bed 4")
        deadline = browser.find_element(By.ID, "deadline").text
        assert "left" in deadline and ("GMT" in deadline or "BST" in deadline) and "UTC" not in deadline
        assert "Dr Priya Shah" in browser.find_element(By.ID, "study-contacts").text
        assert browser.find_element(By.ID, "pis").get_attribute("href") == "https://example.org/pis.pdf"
        assert "{score}" not in browser.find_element(By.ID, "criteria").text
        # A form error in words, and the form keeps what was typed.
        browser.find_element(By.ID, "until").send_keys("31/02/2026")
        browser.find_element(By.ID, "record-snooze").click()
        wait.until(ec.presence_of_element_located((By.ID, "action-error")))
        assert "write it as day/month/year" in browser.find_element(By.ID, "action-error").text
        assert browser.find_element(By.ID, "until").get_attribute("value") == "31/02/2026"

        Select(browser.find_element(By.ID, "action")).select_by_value("approached")
        browser.find_element(By.ID, "note").send_keys("spoke to patient in ED")
        browser.find_element(By.ID, "record").click()
        wait.until(ec.presence_of_element_located((By.ID, "done")))
        assert "approached" in browser.find_element(By.ID, "done").text
        rows = browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
        assert [r.get_attribute("data-stage") for r in rows] == ["approached"]
        assert "Approached" in rows[0].find_element(By.CSS_SELECTOR, "td.stage").text

        # Dismiss it with a coded reason: it leaves the open worklist and shows under "closed".
        rows[0].find_element(By.CSS_SELECTOR, "a.open").click()
        wait.until(ec.presence_of_element_located((By.ID, "history")))
        assert "spoke to patient in ED" in browser.find_element(By.ID, "history").text
        Select(browser.find_element(By.ID, "reason")).select_by_value("travel")
        browser.find_element(By.ID, "record-declined").click()
        wait.until(ec.presence_of_element_located((By.ID, "empty")))
        browser.get(f"{handle.url}/worklist?view=closed")
        wait.until(ec.presence_of_element_located((By.ID, "worklist")))
        assert "Declined" in browser.find_element(By.ID, "worklist").text
        for url in [a.get_attribute("href") for a in browser.find_elements(By.TAG_NAME, "a")]:
            assert PATIENT_A not in (url or "")

    user = next(u for u in seeded.users() if u.username == "nina")
    match = seeded.get_match(user, seeded.worklist(user, view="closed")[0]["token"])
    assert [(a["action"], a["reason"]) for a in match["history"]] == [("approached", None), ("declined", "travel")]
    assert any(e["action"] == "view_match" and e["username"] == "nina" for e in seeded.audit_entries())


def test_worklist_pages_in_the_browser(seeded: Any, browser: Any, make_matches: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    seeded.record_matches(make_matches([("STROKE-1", f"MRN-P-{i:04d}") for i in range(4)]))
    wait = WebDriverWait(browser, 20)
    with serve(Settings(web_port=0, worklist_page_size=2), seeded) as handle:
        browser.get(f"{handle.url}/login")
        browser.find_element(By.ID, "username").send_keys("nina")
        browser.find_element(By.ID, "password").send_keys("nina-long-password")
        browser.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.ID, "worklist")))
        assert "1 to 2 of 5" in browser.find_element(By.ID, "count").text
        seen = {r.text for r in browser.find_elements(By.CSS_SELECTOR, "#worklist td.pid")}
        browser.find_element(By.ID, "next").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "count"), "3 to 4 of 5"))
        seen |= {r.text for r in browser.find_elements(By.CSS_SELECTOR, "#worklist td.pid")}
        browser.find_element(By.ID, "next").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "count"), "5 to 5 of 5"))
        seen |= {r.text for r in browser.find_elements(By.CSS_SELECTOR, "#worklist td.pid")}
        assert len(seen) == 5 and PATIENT_B not in seen


def test_the_public_studies_page_passes_axe_core_with_no_serious_violation(seeded: Any, browser: Any) -> None:
    from pathlib import Path

    from selenium.webdriver.common.by import By

    # axe-core 4.14.1 from the npm registry (`npm pack axe-core`), vendored with its MPL-2.0 licence: the PyPI
    # wrappers bundle releases too old for the WCAG 2.2 rules.
    axe_js = (Path(__file__).parent / "vendor" / "axe-core-4.14.1.min.js").read_text()
    with serve(Settings(web_port=0), seeded) as handle:
        browser.get(f"{handle.url}/studies")
        text = browser.find_element(By.TAG_NAME, "main").text
        assert "Aged 18 or over" in text and "Taking blood-thinning medicine" in text
        assert "three visits over a month" in text and "Salford Royal" in text and "0161 555 0100" in text
        assert "stroke_within_6h" not in browser.page_source and "I63" not in text
        # The page's CSP allows no script from the page; WebDriver's injection runs outside it.
        browser.execute_script(axe_js)
        result = browser.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "axe.run(document, {runOnly: {type: 'tag',"
            " values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']}})"
            ".then(r => done({violations: r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help})),"
            " passes: r.passes.length}))"
            ".catch(e => done({error: String(e)}));"
        )
    assert "error" not in result, result
    serious = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert serious == [], serious
    assert result["passes"] > 10  # the checker really ran
