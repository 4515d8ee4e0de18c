"""Fixtures of the ``quasar serve`` tests: a tiny real bundle (tests/runtime/rt_helpers.py),
image files (good and hostile, tests/runtime/hostile.py) and real servers - ``quasar serve``
subprocesses on 127.0.0.1, on a port the server picks itself (``--port 0``) and names on
stderr."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
httpx = pytest.importorskip("httpx")

import hostile  # noqa: E402
from rt_helpers import write_tiny_bundle  # noqa: E402

QUASAR = Path(sys.executable).with_name("quasar")
START_TIMEOUT = 60.0


class Server:
    """``quasar serve BUNDLE ARGS --port 0`` in a subprocess; ``url`` once it listens."""

    def __init__(self, bundle: Path, *args: str, ready: bool = True) -> None:
        self.wait_for_ready = ready
        self.cmd = [str(QUASAR), "serve", str(bundle), "--port", "0", *map(str, args)]
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""
        self.log: List[str] = []

    def __enter__(self) -> "Server":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=env)
        listening = threading.Event()

        def pump() -> None:
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on (http://\S+)", line)
                if m:
                    self.url = m.group(1)
                    listening.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not listening.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("quasar serve did not start:\n" + "".join(self.log))
        if self.wait_for_ready:
            self.wait_ready(deadline)
        return self

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/ready", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("quasar serve never became ready:\n" + "".join(self.log))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="session")
def serve_bundle(tmp_path_factory) -> Path:
    pytest.importorskip("onnx")
    return write_tiny_bundle(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """(good files, hostile files by name)."""
    root = tmp_path_factory.mktemp("serve-images")
    return hostile.write_good_tree(root / "good"), hostile.write_hostile(root / "hostile")


@pytest.fixture(scope="session")
def server(serve_bundle):
    """The default server (every anchor set), shared by the API and page tests."""
    with Server(serve_bundle, "--anchors", "all", "--max-batch-wait-ms", "20", "--quiet") as s:
        yield s


@pytest.fixture(scope="session")
def server_cls():
    """The :class:`Server` class, for tests that start servers of their own."""
    return Server
