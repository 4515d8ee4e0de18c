"""Render a local HTML file in a real headless Chromium and report what the page did.

Talks the DevTools protocol over a websocket (``websocket-client``): console messages of
level error, uncaught exceptions and browser log errors (failed loads, Content-Security-
Policy violations) are collected while the page loads; then a script inspects the DOM.
Debian's ``chromium`` package (installed by scripts/test.sh); tests skip where it is absent.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Optional[str]:
    env = os.environ.get("QUASAR_CHROMIUM")
    if env:
        return env
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class Chromium:
    """A headless Chromium with remote debugging on a free port; use as a context manager."""

    def __init__(self, binary: str, timeout: float = 60.0):
        self.binary, self.timeout = binary, timeout
        self.profile = tempfile.mkdtemp(prefix="quasar-chromium-")
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None

    def __enter__(self) -> "Chromium":
        self.proc = subprocess.Popen(
            [self.binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--hide-scrollbars", "--window-size=1280,2000", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if active.is_file() and len(active.read_text().splitlines()) >= 2:
                self.port = int(active.read_text().splitlines()[0])
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"{self.binary} did not start its DevTools endpoint")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def _page_ws(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
            targets = json.load(r)
        return next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")

    def render(self, html_file, inspect_js: str, screenshot: Optional[str] = None
               ) -> Dict[str, Any]:
        """Load ``html_file``; return {"errors": [...], "result": inspect_js's JSON value}."""
        import websocket

        ws = websocket.create_connection(self._page_ws(), timeout=self.timeout,
                                         suppress_origin=True)
        ids = iter(range(1, 1 << 30))
        errors: List[str] = []
        loaded = False

        def handle(msg: Dict[str, Any]) -> None:
            nonlocal loaded
            m, p = msg.get("method"), msg.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append("console.error: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                e = p["entry"]
                errors.append(f"log {e.get('source')}: {e.get('text')} {e.get('url', '')}")
            elif m == "Page.loadEventFired":
                loaded = True

        def call(method: str, **params) -> Dict[str, Any]:
            i = next(ids)
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == i:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})
                handle(msg)

        try:
            for domain in ("Page", "Runtime", "Log"):
                call(f"{domain}.enable")
            call("Page.navigate", url=Path(html_file).resolve().as_uri())
            deadline = time.monotonic() + self.timeout
            while not loaded and time.monotonic() < deadline:
                handle(json.loads(ws.recv()))
            if not loaded:
                raise RuntimeError(f"{html_file}: the page did not finish loading")
            # let late console messages and image decodes arrive
            res = call("Runtime.evaluate", expression=(
                "Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))"
                ".then(() => JSON.stringify((" + inspect_js + ")()))"),
                awaitPromise=True, returnByValue=True)
            if "exceptionDetails" in res:
                raise RuntimeError(f"inspect script failed: {res['exceptionDetails']}")
            if screenshot:
                import base64

                shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
            ws.settimeout(0.5)
            try:
                while True:
                    handle(json.loads(ws.recv()))
            except websocket.WebSocketTimeoutException:
                pass
            return {"errors": errors, "result": json.loads(res["result"]["value"])}
        finally:
            ws.close()


INSPECT_JS = """() => {
  const imgs = Array.from(document.images);
  const attrs = Array.from(document.querySelectorAll('[src],[href]'))
      .map(e => e.getAttribute('src') || e.getAttribute('href'));
  return {
    title: document.title,
    plots: document.querySelectorAll('.plot svg').length,
    plot_sizes: Array.from(document.querySelectorAll('.plot svg')).map(s => {
        const r = s.getBoundingClientRect(); return [r.width, r.height]; }),
    plot_elems: Array.from(document.querySelectorAll('.plot svg')).map(s => [
        s.querySelectorAll('path, use, image').length, s.querySelectorAll('text').length]),
    images: imgs.length,
    images_ok: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    image_sizes: imgs.map(i => [i.naturalWidth, i.naturalHeight]),
    gallery_best: document.querySelectorAll('figure.thumb[data-kind=best]').length,
    gallery_worst: document.querySelectorAll('figure.thumb[data-kind=worst]').length,
    placeholders: document.querySelectorAll('figure.thumb .noimg').length,
    captions: Array.from(document.querySelectorAll('figure.thumb figcaption')).map(c => c.innerText),
    failed_rows: Array.from(document.querySelectorAll('table.failed tr'))
        .filter(r => r.querySelector('td')).map(r => Array.from(r.cells).map(c => c.innerText)),
    cmp_rows: Array.from(document.querySelectorAll('table.cmp tr'))
        .filter(r => r.querySelector('td')).map(r => Array.from(r.cells).map(c => c.innerText)),
    external: attrs.filter(a => a && !a.startsWith('data:') && !a.startsWith('#')),
    scripts: document.scripts.length,
    h1: (document.querySelector('h1') || {}).innerText,
    body_height: document.body.scrollHeight,
  };
}"""
