"""Shared fixture: a local HTTP server on 127.0.0.1 (tests never touch the network)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch

# The tests run small models on CPU: a second intra-op thread gains little there, and on a shared 2-core
# machine spinning OpenMP threads made them up to 30x slower. Subprocesses set their own.
torch.set_num_threads(1)

import pytest


@pytest.fixture(autouse=True)
def one_thread():
    """Every test starts with one intra-op thread (a stage's CLI may have set more), and leaves it so."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@dataclass
class LocalServer:
    """Serves files under ``root`` with HTTP Range support, and records every request.

    ``cut_once[name] = k``: the next response for ``name`` announces the full length, sends only ``k``
    bytes, then drops the connection. ``ignore_range``: answer 200 with the whole file even to a Range
    request.
    ``fail[name] = status``: always answer that status.
    """

    root: Path
    url: str = ""
    requests: list[dict] = field(default_factory=list)
    cut_once: dict[str, int] = field(default_factory=dict)
    fail: dict[str, int] = field(default_factory=dict)
    ignore_range: bool = False

    def url_for(self, name: str) -> str:
        return f"{self.url}/{name}"


def _handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            server.requests.append({"path": name, "range": self.headers.get("Range")})
            if name in server.fail:
                self.send_error(server.fail[name])
                return
            f = server.root / name
            if not f.is_file():
                self.send_error(404)
                return
            data = f.read_bytes()
            start = 0
            m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if m and not server.ignore_range:
                start = int(m.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if name in server.cut_once:
                self.wfile.write(body[: server.cut_once.pop(name)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def http_server(tmp_path: Path):
    """A :class:`LocalServer` serving ``tmp_path / "srv"`` on 127.0.0.1 (random port) in a thread."""
    root = tmp_path / "srv"
    root.mkdir()
    state = LocalServer(root)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)
