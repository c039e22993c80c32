"""The built book in a real browser: headless Chromium over every page.

The book is built (or a fresh build reused, see tests/test_build.py), served
from `_build/html` on 127.0.0.1 (an ephemeral port, in a thread), and opened
in Debian's headless `chromium`. For every page of the table of contents:

- the page loads with no console error and no uncaught exception;
- every image has loaded (naturalWidth > 0);
- math is typeset (MathJax output elements present, no raw `$$` or `\\(` left);
- the sidebar lists every chapter, in the order of _toc.yml;
- exercise solutions start folded (dropdowns);
- each saved ipywidgets view on the page renders as a widget;
- no request goes to any host but the local server (the book reads offline);
- a screenshot is saved to test-artifacts/screenshots/<page>.png.

Chromium is driven through the Chrome DevTools Protocol over a pipe
(`--remote-debugging-pipe`: JSON messages separated by NUL bytes on file
descriptors 3 and 4), so the test needs no package beyond the standard
library and no browser download. Set BNBOOK_CHROMIUM to use another binary.
The test is skipped, saying so, only when no Chromium binary is found.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from test_build import HTML, ROOT, chapter_pages, ensure_build, toc_pages

ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
WIDTH, HEIGHT = 1280, 900
MAX_SHOT_HEIGHT = 16000  # px; longer pages are cut at this height
PAGE_TIMEOUT = 60.0  # s, per page (the machine may be busy)

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    # Belt and braces for the offline check: a name other than localhost
    # cannot resolve, so nothing can leave the machine even if a page asked.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
    f"--window-size={WIDTH},{HEIGHT}",
    "--remote-debugging-pipe",
]


def find_chromium() -> str | None:
    env = os.environ.get("BNBOOK_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium driven with the DevTools protocol over a pipe."""

    def __init__(self, binary: str, workdir: Path):
        self.workdir = workdir
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        self._events: list[dict] = []
        self._cond = threading.Condition()
        self._closed = False

        cmd_r, cmd_w = os.pipe()  # we write commands; Chromium reads fd 3
        evt_r, evt_w = os.pipe()  # Chromium writes fd 4; we read
        # Move the child's ends above the standard range so that the dup2 onto
        # 3 and 4 below never maps a descriptor onto itself.
        child_in = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(evt_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r)
        os.close(evt_w)
        log = os.open(workdir / "chromium.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        log = fcntl.fcntl(log, fcntl.F_DUPFD_CLOEXEC, 10)
        null = os.open(os.devnull, os.O_RDONLY)
        null = fcntl.fcntl(null, fcntl.F_DUPFD_CLOEXEC, 10)
        argv = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={workdir / 'profile'}", "about:blank"]
        try:
            self.pid = os.posix_spawn(
                binary,
                argv,
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, null, 0),
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                    (os.POSIX_SPAWN_DUP2, child_in, 3),
                    (os.POSIX_SPAWN_DUP2, child_out, 4),
                ],
            )
        finally:
            for fd in (child_in, child_out, log, null):
                os.close(fd)
        self._w = cmd_w
        self._r = evt_r
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        self.version = self.send("Browser.getVersion", timeout=30)["product"]

    # -- protocol plumbing -------------------------------------------------
    def _read_loop(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            *messages, buf = buf.split(b"\0")
            with self._cond:
                for raw in messages:
                    msg = json.loads(raw)
                    if "id" in msg:
                        self._responses[msg["id"]] = msg
                    else:
                        self._events.append(msg)
                self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        msg = {"id": ident, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self._w, data):]
        deadline = time.monotonic() + timeout
        with self._cond:
            while ident not in self._responses:
                if self._closed:
                    raise CDPError(f"Chromium exited during {method}; see {self.workdir / 'chromium.log'}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CDPError(f"no answer to {method} within {timeout} s")
                self._cond.wait(left)
            reply = self._responses.pop(ident)
        if "error" in reply:
            raise CDPError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def take_events(self, session: str) -> list[dict]:
        with self._cond:
            mine = [e for e in self._events if e.get("sessionId") == session]
            self._events = [e for e in self._events if e.get("sessionId") != session]
        return mine

    def wait_event(self, session: str, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(e.get("sessionId") == session and e["method"] == method for e in self._events):
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise CDPError(f"no {method} within {timeout} s")
                self._cond.wait(left)

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
        except CDPError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.1)
        else:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass


class Page:
    """One tab, with the console, network and page events it reports."""

    def __init__(self, browser: Chromium):
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        self.send("Network.setCacheDisabled", {"cacheDisabled": True})

    def send(self, method, params=None, timeout=30.0):
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def open(self, url: str) -> list[dict]:
        """Load url and wait for the load event; return the events so far."""
        self.browser.take_events(self.session)
        nav = self.send("Page.navigate", {"url": url})
        if nav.get("errorText"):
            raise CDPError(f"{url} did not load: {nav['errorText']}")
        self.browser.wait_event(self.session, "Page.loadEventFired", PAGE_TIMEOUT)
        return self.browser.take_events(self.session)

    def evaluate(self, expression: str, timeout: float = PAGE_TIMEOUT):
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            raise CDPError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        """The whole page (up to MAX_SHOT_HEIGHT): the viewport is made as tall
        as the page for the shot, then restored. (Chromium's captureBeyondViewport
        shifts this theme's layout sideways.)"""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        height = max(HEIGHT, min(int(size["height"]) + 1, MAX_SHOT_HEIGHT))
        metrics = {"width": WIDTH, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", {**metrics, "height": height})
        try:
            time.sleep(0.3)  # let the layout settle at the new height
            shot = self.send("Page.captureScreenshot", {"format": "png"}, timeout=PAGE_TIMEOUT)
        finally:
            self.send("Emulation.setDeviceMetricsOverride", {**metrics, "height": HEIGHT})
        path.write_bytes(base64.b64decode(shot["data"]))


# Runs in the page once it has loaded: waits for MathJax and for the widget
# manager, then reports what a reader would see.
INSPECT = r"""
(async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const t0 = performance.now();
  const limit = %(limit)d;
  const mathNodes = document.querySelectorAll('span.math, div.math');
  if (mathNodes.length) {
    while (!(window.MathJax && MathJax.startup && MathJax.startup.promise) && performance.now() - t0 < limit)
      await sleep(50);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  }
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const isRendered = s => {
    const area = s.previousElementSibling;
    if (!area || !area.classList.contains('widget-subarea')) return false;
    const w = area.querySelector('.jupyter-widgets, .lm-Widget');
    return !!w && w.getBoundingClientRect().height > 0;
  };
  while (views.some(s => !isRendered(s)) && performance.now() - t0 < limit) await sleep(100);
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.complete ? null :
      Promise.race([new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); }), sleep(limit)])));
  const clone = document.querySelector('main, article, body').cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, textarea, .cell_input, mjx-container').forEach(n => n.remove());
  const text = clone.textContent;
  const untypeset = [...mathNodes].filter(n => !n.querySelector('mjx-container')).map(n => n.textContent.slice(0, 80));
  const solutions = [...document.querySelectorAll('section#exercises .admonition.dropdown')];
  const nav = [...document.querySelectorAll('nav.bd-docs-nav a.reference.internal')]
      .map(a => ({path: new URL(a.href).pathname, text: a.textContent.trim()}));
  return {
    title: document.title,
    mathNodes: mathNodes.length,
    mjx: document.querySelectorAll('mjx-container').length,
    untypeset: untypeset,
    rawDollars: text.includes('$$'),
    rawParens: /\\\(|\\\[/.test(text),
    images: imgs.map(i => ({src: i.getAttribute('src'), complete: i.complete, w: i.naturalWidth})),
    solutions: solutions.length,
    solutionsOpen: solutions.filter(d => !d.classList.contains('toggle-hidden')).length,
    views: views.length,
    viewsRendered: views.filter(isRendered).length,
    nav: nav,
    seconds: (performance.now() - t0) / 1000,
  };
})()
"""


@pytest.fixture(scope="module")
def site(http_server):
    """(browser page, base URL, build record): the built book served on 127.0.0.1."""
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "browser test skipped: no Chromium binary found (install Debian's 'chromium' "
            "package, e.g. `apt-get install -y chromium`, or set BNBOOK_CHROMIUM)"
        )
    build = ensure_build()
    assert (HTML / "index.html").exists(), "the book did not build:\n" + build["output"]
    workdir = Path(tempfile.mkdtemp(prefix="bnbook-chromium-"))
    browser = None
    try:
        with http_server(HTML) as base:
            browser = Chromium(binary, workdir)
            page = Page(browser)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            yield page, base, build
    finally:
        if browser is not None:
            browser.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _problems(events: list[dict], base: str) -> tuple[list[str], list[str]]:
    """(console errors, requests to other hosts) found in the events of a page."""
    errors, remote = [], []
    local = urlparse(base).netloc
    for e in events:
        m, p = e["method"], e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            desc = d.get("exception", {}).get("description") or d.get("text")
            errors.append(f"uncaught: {desc} ({d.get('url', '')}:{d.get('lineNumber')})")
        elif m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            errors.append(f"console.{p['type']}: {args}")
        elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
            entry = p["entry"]
            if entry.get("url", "").endswith("/favicon.ico"):
                continue  # the browser asks for a site icon the book does not have
            errors.append(f"{entry['source']}: {entry['text']} {entry.get('url', '')}")
        elif m == "Network.responseReceived" and p["response"]["status"] >= 400:
            if p["response"]["url"].endswith("/favicon.ico"):
                continue
            errors.append(f"HTTP {p['response']['status']}: {p['response']['url']}")
        elif m == "Network.requestWillBeSent":
            url = p["request"]["url"]
            parsed = urlparse(url)
            if parsed.scheme in ("data", "blob", "about"):
                continue
            if parsed.scheme not in ("http", "https") or parsed.netloc != local:
                remote.append(url)
    return errors, remote


def _notebook_has_widget_views(page: str) -> bool:
    nb_path = ROOT / f"{page}.ipynb"
    if not nb_path.exists():
        return False
    nb = json.loads(nb_path.read_text())
    if not nb.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state"):
        return False
    return any(
        "application/vnd.jupyter.widget-view+json" in out.get("data", {})
        for cell in nb["cells"]
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
    )


@pytest.mark.parametrize("page", toc_pages())
def test_page_in_browser(site, page):
    tab, base, _ = site
    url = f"{base}/{page}.html"
    events = tab.open(url)
    report = tab.evaluate(INSPECT % {"limit": int(PAGE_TIMEOUT * 1000)}, timeout=PAGE_TIMEOUT + 10)
    time.sleep(0.2)  # let late console messages arrive
    events += tab.browser.take_events(tab.session)
    shot = ARTIFACTS / (page.replace("/", "__") + ".png")
    tab.screenshot(shot)
    errors, remote = _problems(events, base)

    assert remote == [], f"{page}: requests to other hosts (the book must read offline): {remote}"
    assert errors == [], f"{page}: console errors:\n" + "\n".join(errors)

    broken = [i["src"] for i in report["images"] if not (i["complete"] and i["w"] > 0)]
    assert broken == [], f"{page}: images that did not load: {broken}"

    if report["mathNodes"]:
        assert report["mjx"] > 0, f"{page}: math on the page but no MathJax output"
        assert report["untypeset"] == [], f"{page}: math left untypeset: {report['untypeset'][:5]}"
    assert not report["rawDollars"], f"{page}: raw '$$' left in the text"
    assert not report["rawParens"], f"{page}: raw '\\(' or '\\[' left in the text"

    expected = [f"/{p}.html" for p in chapter_pages()]
    listed = [n["path"] for n in report["nav"] if n["path"] in expected]
    assert listed == expected, f"{page}: sidebar chapters {listed} differ from the toc {expected}"
    numbers = [n["text"].split(" ", 1)[0] for n in report["nav"] if n["path"] in expected]
    assert numbers == [f"{i}." for i in range(1, len(expected) + 1)], f"{page}: sidebar numbering {numbers}"

    assert report["solutionsOpen"] == 0, f"{page}: {report['solutionsOpen']} exercise solutions are shown open"

    if _notebook_has_widget_views(page):
        assert report["views"] > 0, f"{page}: the notebook saves widgets but the page has no widget views"
    assert report["viewsRendered"] == report["views"], (
        f"{page}: {report['views'] - report['viewsRendered']} of {report['views']} widgets did not render"
    )
    assert shot.stat().st_size > 0
