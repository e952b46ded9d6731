"""The report opens in a real browser: every figure loads, no console error, no network request,
the tables are there. Headless Chromium is driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: JSON messages separated by NUL on file descriptors 3 and 4), so the
check needs only the ``chromium`` package and the standard library, and opens no port.

Set PATCHLENS_REPORT=/path/to/index.html to check an existing report (the demo's); set
PATCHLENS_SCREENSHOT_DIR to keep the screenshots; PATCHLENS_CHROMIUM to pick the browser binary.
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--hide-scrollbars", "--window-size=1280,1600", "--remote-debugging-pipe"]


def find_chromium() -> str | None:
    env = os.environ.get("PATCHLENS_CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not found (Debian: apt-get install chromium; "
                             "or set PATCHLENS_CHROMIUM=/path/to/chrome)")


class Chromium:
    """A headless Chromium and one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, binary: str, user_data_dir: Path, log_path: Path):
        to_chrome_r, self._w = os.pipe()     # we write, Chromium reads on fd 3
        self._r, from_chrome_w = os.pipe()   # Chromium writes on fd 4, we read

        def child_fds():  # runs in the child before exec: land the pipe ends on fds 3 and 4
            import fcntl
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=child_fds, pass_fds=(3, 4))  # preexec runs before fds are closed
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self.events: list[dict] = []
        self._inbox: queue.Queue = queue.Queue()
        threading.Thread(target=self._reader, daemon=True).start()
        self.session = None

    def _reader(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._inbox.put(None)
                return
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                self._inbox.put(json.loads(msg))

    def _pump(self, timeout: float) -> bool:
        try:
            msg = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return False
        if msg is None:
            raise RuntimeError(f"Chromium exited (code {self.proc.poll()}); see {self._log.name}")
        if "id" in msg:
            self._replies[msg["id"]] = msg
        else:
            self.events.append(msg)
        return True

    def send(self, method: str, params: dict | None = None, timeout: float = 60.0,
             session: bool = True) -> dict:
        self._next_id += 1
        i = self._next_id
        msg = {"id": i, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        end = time.monotonic() + timeout
        while i not in self._replies:
            if time.monotonic() > end:
                raise TimeoutError(f"no reply to {method} in {timeout} s")
            self._pump(0.2)
        reply = self._replies.pop(i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e.get("method") == method:
                    return e
            if time.monotonic() > end:
                raise TimeoutError(f"no {method} event in {timeout} s")
            self._pump(0.2)

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        self.session = self.send("Target.attachToTarget", {"targetId": target["targetId"],
                                                           "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def screenshot(self, path: Path, y: int = 0, height: int = 1600) -> Path:
        shot = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": y, "width": 1280, "height": height, "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions, browser log errors, non-local requests."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                  for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.requestWillBeSent":
                url = p.get("request", {}).get("url", "")
                if not url.startswith(("file:", "data:", "about:")):
                    out.append(f"network request: {url}")
            elif m == "Network.loadingFailed":
                out.append(f"failed to load: {p.get('errorText')}")
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False, timeout=10)
        except Exception:  # noqa: BLE001 - the process is stopped below either way
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()


PAGE_STATE = """(() => {
  const imgs = [...document.images].map(i => ({
    ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, alt: i.alt,
    inline: i.src.startsWith('data:image/png;base64,')}));
  return {title: document.title, imgs,
          tables: document.querySelectorAll('table').length,
          rows: document.querySelectorAll('tbody tr').length,
          sections: [...document.querySelectorAll('section')].map(s => s.id),
          height: document.documentElement.scrollHeight,
          external: [...document.querySelectorAll('script[src],link[href],iframe')].length};
})()"""


def inspect_report(index_html: Path, shots_dir: Path) -> dict:
    """Open ``index_html``; return the page state, problems and screenshot paths."""
    shots_dir.mkdir(parents=True, exist_ok=True)
    browser = Chromium(CHROMIUM, shots_dir / "profile", shots_dir / "chromium.log")
    try:
        browser.open(index_html.resolve().as_uri())
        state = browser.evaluate(PAGE_STATE)
        shots = [browser.screenshot(shots_dir / "report_top.png")]
        for anchor in ("fewshot_seg", "provenance"):
            y = browser.evaluate(
                f"(() => {{ const s = document.getElementById('{anchor}');"
                " return s ? Math.round(s.getBoundingClientRect().top + window.scrollY) : -1;"
                " })()")
            if y is not None and y >= 0:
                y = max(0, min(int(y), int(state["height"]) - 1600))
                shots.append(browser.screenshot(shots_dir / f"report_{anchor}.png", y=y))
        state["problems"] = browser.problems()
        state["shots"] = shots
    finally:
        browser.close()
    keep = os.environ.get("PATCHLENS_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for s in state.get("shots", []):
            shutil.copy(s, Path(keep) / s.name)
    return state


def assert_report_ok(state: dict, n_figures: int | None = None) -> None:
    assert not state["problems"], state["problems"]
    bad = [i["alt"] for i in state["imgs"] if not i["ok"]]
    assert not bad, f"images that did not load: {bad}"
    assert all(i["inline"] for i in state["imgs"]), "an image is not an inline PNG"
    assert state["external"] == 0, "the page references an external script/stylesheet/frame"
    assert state["imgs"], "no figure on the page"
    if n_figures is not None:
        assert len(state["imgs"]) == n_figures
    assert state["tables"] >= 2 and state["rows"] > 0
    assert {"config", "provenance"} <= set(state["sections"])
    from PIL import Image, ImageStat
    for shot in state["shots"]:
        with Image.open(shot) as im:
            assert im.size == (1280, 1600)
            assert max(ImageStat.Stat(im.convert("L")).stddev) > 5, f"{shot} is blank"


def _synthetic():
    spec = importlib.util.spec_from_file_location(
        "_patchlens_synthetic_tables", HERE.parent / "unit" / "test_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_chromium
def test_synthetic_report_in_browser(tmp_path):
    from patchlens.report.figures import FIGURES, make_figures
    from patchlens.report.html import write_report

    syn = _synthetic()
    tables = syn.synthetic_tables(tmp_path / "tables")
    pngs = [p for p in make_figures(tables, tmp_path / "figures") if p.suffix == ".png"]
    assert len(pngs) == len(FIGURES)
    config = {"models": {m: {k: v for k, v in e.items() if k != "n_layers"}
                         for m, e in syn.MODELS.items()},
              "tasks": {"fewshot_seg": {"shots": 1, "k": 20}}}
    provenance = {"models": {"dino": {"source": "timm:vit_small_patch16_224.dino",
                                      "sha256": "0" * 64}},
                  "datasets": {"scenes": {"sha256": "1" * 64, "generator": "scenes v1"}}}
    index = write_report(tables, tmp_path / "figures", tmp_path / "report" / "index.html",
                         config, provenance)
    state = inspect_report(index, tmp_path / "shots")
    assert_report_ok(state, n_figures=len(FIGURES))
    assert state["title"] == "patchlens report"


@needs_chromium
def test_existing_report_in_browser(tmp_path):
    path = os.environ.get("PATCHLENS_REPORT")
    if not path:
        pytest.skip("set PATCHLENS_REPORT=/path/to/results/report/index.html to check a report")
    index = Path(path)
    assert index.exists(), f"PATCHLENS_REPORT={path}: no such file"
    assert_report_ok(inspect_report(index, tmp_path / "shots"))


@needs_chromium
def test_check_catches_a_broken_page(tmp_path):
    """The checks can fail: a broken image, a console error and a network request are seen."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head>'
                    '<body><img alt="broken" src="data:image/png;base64,AAAA">'
                    '<img alt="remote" src="http://127.0.0.1:9/x.png">'
                    "<script>console.error('boom')</script></body></html>")
    state = inspect_report(page, tmp_path / "shots")
    assert [i["ok"] for i in state["imgs"]] == [False, False]
    assert any(p.startswith("console: boom") for p in state["problems"]), state["problems"]
    assert any("network request: http://127.0.0.1:9/x.png" in p for p in state["problems"])
    with pytest.raises(AssertionError):
        assert_report_ok(state)
