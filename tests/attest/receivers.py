"""Real local HTTP endpoints for alert tests: a webhook receiver that records what it gets (and
can refuse the first requests), and Prometheus Alertmanager itself (Debian's package)."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from ultraviolet.tools import Spawned, spawn_host

ALERTMANAGER = shutil.which("prometheus-alertmanager")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class WebhookReceiver:
    refuse_first: int = 0
    received: list[Any] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, body: bytes) -> int:
        with self.lock:
            self.requests += 1
            if self.requests <= self.refuse_first:
                return 503
            self.received.append(json.loads(body))
            return 200


@contextmanager
def webhook_receiver(refuse_first: int = 0) -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(refuse_first)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(receiver.handle(body))
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout} s")
        time.sleep(0.2)


@contextmanager
def alertmanager() -> Iterator[str]:
    """A real Alertmanager on a free loopback port with a receiver that sends nowhere."""
    assert ALERTMANAGER is not None
    root = Path(tempfile.mkdtemp(prefix="uv-am-"))
    config = root / "alertmanager.yml"
    config.write_text(
        "route:\n  receiver: 'none'\n  group_wait: 1h\nreceivers:\n  - name: 'none'\n"
    )
    port = free_port()
    process: Spawned = spawn_host(
        [
            ALERTMANAGER,
            f"--config.file={config}",
            f"--storage.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        log=root / "alertmanager.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/-/ready")
        yield url
    finally:
        process.stop()
        shutil.rmtree(root, ignore_errors=True)
