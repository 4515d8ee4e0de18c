"""The page at ``/`` in a real headless Chromium (DevTools protocol, as
tests/evaluate/chromium.py): files are uploaded through the page's file input, and the
scores it shows equal the API's; the page loads nothing from elsewhere and its strict
Content-Security-Policy blocks nothing it needs (no violation logged)."""
from __future__ import annotations

import json
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("websocket")

import hostile  # noqa: E402
from chromium import Chromium, find_chromium  # noqa: E402

CARDS_JS = """JSON.stringify(Array.from(document.querySelectorAll('figure.card')).map(f => ({
  name: f.dataset.name, status: f.dataset.status,
  shown: Array.from(f.querySelectorAll('.score')).map(s => [s.dataset.set, s.innerText,
                                                           Number(s.dataset.score)]),
  error: (f.querySelector('.bad') || {}).innerText || null,
  preview: f.querySelector('img') ? f.querySelector('img').naturalWidth : null,
})))"""


class Page:
    """A DevTools session on Chromium's first page, collecting errors as they come."""

    def __init__(self, browser: Chromium) -> None:
        import websocket

        self.ws = websocket.create_connection(browser._page_ws(), timeout=60,
                                              suppress_origin=True)
        self.ids, self.errors, self.loaded = 0, [], False
        for domain in ("Page", "Runtime", "Log", "DOM"):
            self.call(f"{domain}.enable")

    def handle(self, msg) -> None:
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(p)[:400])
        elif m == "Runtime.consoleAPICalled" and p.get("type") == "error":
            self.errors.append(json.dumps(p)[:400])
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            self.errors.append(p["entry"].get("text", ""))
        elif m == "Page.loadEventFired":
            self.loaded = True

    def call(self, method, **params):
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.ids:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.handle(msg)

    def eval(self, expr):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True,
                         awaitPromise=True)["result"].get("value")

    def wait(self, expr, timeout=60.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expr)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(expr)


def test_page_uploads_and_shows_the_apis_scores(server, images, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no chromium (scripts/test.sh installs Debian's)")
    good, bad = images
    files = good[:4] + [bad["text.png"], bad["cmyk.jpg"]]
    api = httpx.post(server.url + "/v1/score", timeout=60, files=[
        ("files", (p.name, p.read_bytes())) for p in files]).json()["results"]
    head = httpx.get(server.url + "/")
    csp = head.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "unsafe" not in csp and "connect-src 'self'" in csp
    with Chromium(binary) as browser:
        page = Page(browser)
        page.call("Page.navigate", url=server.url + "/")
        page.wait("document.readyState === 'complete'")
        page.wait("document.getElementById('model').textContent.includes('tiny.test')")
        root = page.call("DOM.getDocument")["root"]["nodeId"]
        node = page.call("DOM.querySelector", nodeId=root, selector="#files")["nodeId"]
        page.call("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in files])
        page.wait("document.body.dataset.done === '1'")
        page.wait("Array.from(document.images).every(i => i.complete)")
        shown_cards = json.loads(page.eval(CARDS_JS))
        cards = {c["name"]: c for c in shown_cards}
        external = page.eval("Array.from(document.querySelectorAll('[src],[href]')).map(e => "
                             "e.getAttribute('src') || e.getAttribute('href'))"
                             ".filter(a => !a.startsWith('blob:'))")
        status = page.eval("document.getElementById('status').textContent")
        page.call("Page.captureScreenshot", format="png")  # renders without error
        page.ws.close()
    assert not page.errors, page.errors
    assert external == []
    assert status == "5 scored, 1 failed"
    assert [c["name"] for c in shown_cards] == [p.name for p in files]  # in upload order
    for e in api:
        c = cards[e["name"]]
        assert c["status"] == e["status"]
        if e["status"] == "ok":
            assert c["preview"] and c["preview"] > 0  # the image itself is shown
            shown = {s: (text, value) for s, text, value in c["shown"]}
            assert set(shown) == set(e["scores"])
            for s, v in e["scores"].items():
                assert shown[s][1] == v  # the number the page got is the API's
                assert shown[s][0] == f"{s}: {v:.6f}"
        else:
            assert c["error"].startswith(e["status"] + ": ") and e["error"] in c["error"]
    assert hostile.BAD_HOSTILE["text.png"] >= {cards["text.png"]["status"]}
