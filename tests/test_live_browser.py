"""The scanner-room page in real Chromium (issue 15): driven over the DevTools protocol while storescu
sends a study series by series; the page must show the missing post-contrast T1 and then clear it, by
server-sent events, without reloading."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from dicom_fixtures import generate_study
from test_live import TOKEN, LiveNode

CHROMIUM = Path("/usr/bin/chromium")


class Page:
    """One Chromium tab over CDP: navigate, evaluate JavaScript."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=30))
            if msg.get("id") == msg_id:
                assert "error" not in msg, msg
                result: dict[str, Any] = msg.get("result", {})
                return result

    def eval(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return res.get("result", {}).get("value")

    def wait(self, what: str, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"page did not show {what} within {timeout} s (last: {value!r}); page: "
                             f"{self.eval('document.body.innerText')!r}")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Page]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium): apt-get install -y chromium")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}",
         "--remote-debugging-port=0", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.monotonic() < deadline and proc.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        with connect(url, max_size=None) as ws:
            yield Page(ws)
    finally:
        proc.terminate()
        proc.wait(20)


def test_scanner_room_page_in_chromium_flags_and_clears_the_missing_post_t1(browser: Page, tmp_path: Path) -> None:
    node = LiveNode(tmp_path / "node")
    try:
        study = generate_study(tmp_path / "study", profile="ms-brain-routine", slices=3, accession="ACC88",
                               patient_name="DOE^JANE")
        browser.call("Network.enable")
        browser.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Bearer {TOKEN}"})
        browser.call("Page.enable")
        browser.call("Page.navigate", url=node.base + "/live")
        browser.wait("the empty page", "document.getElementById('empty') !== null")
        browser.wait("the stream connected", "document.getElementById('connection').textContent === 'live'")
        browser.eval("window.__noReload = 42")
        panel = "document.querySelector('section.panel[data-scanner=\"MR1\"]')"
        before = [s for s in study.series if s.key != "t1_post"]
        for s in before:
            node.storescu(list(s.files))
        browser.wait("every series but the post-contrast T1",
                     f"{panel} && {panel}.querySelectorAll('ul.series li:not(.receiving)').length === {len(before)}")
        missing = browser.wait("the missing post-contrast T1",
                               f"{panel}.querySelector('ul.missing') && {panel}.querySelector('ul.missing').innerText")
        assert "Post-contrast T1" in missing
        assert "contrast given at" in browser.eval(f"{panel}.querySelector('ul.timers').innerText")
        assert browser.eval(f"{panel}.classList.contains('has-missing')") is True
        text = browser.eval(f"{panel}.innerText")
        assert "J.D." in text and "ACC88" in text and "DOE" not in text
        assert "T2_FLAIR" in text
        (t1_post,) = [s for s in study.series if s.key == "t1_post"]
        node.storescu(list(t1_post.files))
        browser.wait("the missing list cleared",
                     f"{panel}.querySelectorAll('ul.series li:not(.receiving)').length === {len(study.series)}"
                     f" && {panel}.querySelector('ul.missing') === null")
        assert browser.eval("window.__noReload") == 42  # updated in place by EventSource, never reloaded
    finally:
        node.stop()
