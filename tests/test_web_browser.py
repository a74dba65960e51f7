"""The web pages in real Chromium (Debian chromium + chromium-driver, driven by Selenium), against the
running service: log in, the dashboard chart, filter studies, open a report, accept an unverifiable
study, edit a plan and find the new worklist item with DCMTK findscu, log out.

One browser session for the module (CI has 2 cores). Screenshots go to $MSF_TEST_ARTIFACTS (default
test-artifacts/web/ in the repository). Every page is checked for console errors and for requests to
anything but the service on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodeutil import DCMTK
from webutil import PASSWORD, WebNode

CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.skipif(not (DCMTK / "findscu").exists(), reason="DCMTK not installed (apt-get install dcmtk)"),
    pytest.mark.skipif(not Path("/usr/bin/chromium").exists() or not Path(CHROMEDRIVER).exists(),
                       reason="apt-get install -y chromium chromium-driver"),
]
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

ARTIFACTS = Path(os.environ.get("MSF_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts" / "web"))
PID_OK, PID_UNVERIFIABLE = "PIDBROWSE01", "PIDBROWSE02"


class Browser:
    def __init__(self, node: WebNode, profile: Path) -> None:
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1280,1400", f"--user-data-dir={profile}",
                    # nothing but loopback resolves: a page that tried to fetch from the internet would fail
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=opts)
        self.driver.set_page_load_timeout(30)
        self.base = f"http://127.0.0.1:{node.http_port}"
        self.requests: list[str] = []
        self.console: list[dict[str, Any]] = []

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        assert path.stat().st_size > 5000
        return path

    def collect(self) -> None:
        """Console messages and every request the pages made since the last call."""
        self.console += self.driver.get_log("browser")
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.requestWillBeSent":
                self.requests.append(msg["params"]["request"]["url"])

    def wait(self, css: str) -> Any:
        return WebDriverWait(self.driver, 20).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNode]:
    tmp = tmp_path_factory.mktemp("browser")
    n = WebNode(tmp / "node")
    n.start()
    n.add_user("lead", "admin")
    n.send_study(tmp / "studies", "ok", patient_id=PID_OK, patient_name="BROWSER^OK")
    n.send_study(tmp / "studies", "unv", patient_id=PID_UNVERIFIABLE, patient_name="BROWSER^UNV",
                 defects=["no_contrast_start"], study_date="20260210", seed=2)
    n.wait_scheduled(PID_OK)
    yield n
    if n.proc is not None and n.proc.poll() is None:
        assert n.stop() == 0


@pytest.fixture(scope="module")
def browser(node: WebNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    b = Browser(node, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.collect()
    b.quit()


def test_log_in_see_the_chart_filter_studies_and_open_a_report(browser: Browser, node: WebNode) -> None:
    d = browser.driver
    browser.open("/")
    assert d.current_url.endswith("/login")
    d.find_element(By.ID, "username").send_keys("lead")
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.ID, "login").click()
    chart = browser.wait("#chart-scanner svg.chart")
    assert len(chart.find_elements(By.CSS_SELECTOR, "circle")) >= 1
    assert "1" in d.find_element(By.ID, "awaiting").text
    browser.shot("01-dashboard")

    browser.open("/studies")
    assert len(d.find_elements(By.CSS_SELECTOR, "#studies tbody a.study-link")) == 2
    Select(d.find_element(By.ID, "verdict")).select_by_visible_text("unverifiable")  # app.js submits on change
    WebDriverWait(d, 20).until(lambda drv: "verdict=unverifiable" in drv.current_url)
    rows = d.find_elements(By.CSS_SELECTOR, "#studies tbody a.study-link")
    assert len(rows) == 1 and "2026-02-10" in rows[0].text
    assert "verdict=" not in str(d.execute_script("return document.cookie"))
    browser.shot("02-studies-filtered")

    rows[0].click()
    browser.wait("#report table")
    report = d.find_element(By.ID, "report").text
    assert "unverifiable" in report.lower() and "Requirement" in report
    browser.shot("03-report")
    browser.collect()


def test_accept_an_unverifiable_study(browser: Browser) -> None:
    d = browser.driver
    d.find_element(By.ID, "accept-reason").send_keys("contrast given 5 min before T1 post, per the technologist's notes")
    d.find_element(By.ID, "accept").click()
    WebDriverWait(d, 10).until(EC.alert_is_present()).accept()  # app.js asks first
    WebDriverWait(d, 20).until(lambda drv: not drv.find_elements(By.ID, "accept"))
    heading = d.find_element(By.TAG_NAME, "h1").text
    assert "compliant" in heading and "was unverifiable" in heading
    assert "lead: accept" in d.find_element(By.TAG_NAME, "main").text
    browser.shot("04-accepted")
    browser.collect()


def _findscu(node: WebNode, patient_id: str) -> str:
    done = subprocess.run(
        [str(DCMTK / "findscu"), "-W", "-aet", "FINDSCU", "-aec", node.ae_title, "-k", f"PatientID={patient_id}",
         "-k", "AccessionNumber", "-k", "ScheduledProcedureStepSequence[0].Modality=MR",
         "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription",
         "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


def test_edit_a_plan_then_find_the_new_worklist_item_with_findscu(browser: Browser, node: WebNode) -> None:
    d = browser.driver
    browser.open("/patients")
    d.find_element(By.LINK_TEXT, PID_OK).click()
    browser.wait("#plan-form")
    assert PID_OK not in d.current_url  # internal numbers in addresses, never the patient ID
    before = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#worklist-items tr.open td.accession")]
    assert len(before) == 1 and before[0] in _findscu(node, PID_OK)
    d.find_element(By.ID, "f-dmt").send_keys("natalizumab")
    d.find_element(By.ID, "f-dmt_start").send_keys("01102024")  # the date input's own keyboard format (en-US)
    Select(d.find_element(By.ID, "f-jcv")).select_by_visible_text("positive")
    d.find_element(By.ID, "save-plan").click()
    browser.wait("#saved")
    assert d.find_element(By.ID, "f-dmt").get_attribute("value") == "natalizumab"
    after = [e.text for e in d.find_elements(By.CSS_SELECTOR, "#worklist-items tr.open td.accession")]
    assert len(after) == 1 and after != before, "the plan change did not replace the worklist item"
    browser.shot("05-plan-saved")
    found = _findscu(node, PID_OK)
    assert after[0] in found and before[0] not in found
    assert "natalizumab" in d.find_element(By.TAG_NAME, "main").text
    browser.collect()


def test_log_out_and_every_page_was_clean(browser: Browser, node: WebNode) -> None:
    d = browser.driver
    for path in ("/", "/studies", "/patients", "/worklist", "/deliveries", "/audit", "/system"):
        browser.open(path)
        browser.wait("main h1")
    browser.shot("06-system")
    d.find_element(By.ID, "logout").click()
    browser.wait("#login")
    browser.open("/studies")
    assert d.current_url.endswith("/login")
    browser.shot("07-logged-out")
    browser.collect()
    errors = [m for m in browser.console if m.get("level") == "SEVERE"]
    assert not errors, errors
    # chrome:// and about: are the browser's own pages (its start tab), served from inside it
    outside = [u for u in browser.requests
               if not re.match(rf"^(http://127\.0\.0\.1:{node.http_port}/|data:|chrome://|about:)", u)]
    assert browser.requests and not outside, outside
    assert not [u for u in browser.requests if PID_OK in u or PID_UNVERIFIABLE in u]
