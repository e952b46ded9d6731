"""A small threaded HTTP file server on 127.0.0.1 for download tests.

    with FileServer(directory) as server:
        url = server.url("archive.tar")
        server.cut["archive.tar"] = [1000]      # the next response stops after 1000 body bytes
        server.truncate["archive.tar"] = 5000   # every response ends at file byte 5000
        server.ignore_range = True              # answer Range requests with the whole file (200)
        server.send_length = False              # no Content-Length: the close ends the body
        server.requests                         # [(name, Range header or None), ...]
        server.hits("archive.tar")              # GET requests for that file

Responses announce the full ``Content-Length`` (or range length) unless ``send_length`` is
False, so a cut-short or truncated body looks like a dropped connection to the client (without
the length, like a complete transfer). ``Range: bytes=N-`` is answered with
``206`` and ``Content-Range``, or ``416`` past the end. Unknown names get ``404``.
"""
from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer:
    """Serve the files of one directory; see the module docstring."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.requests: list[tuple[str, str | None]] = []
        self.cut: dict[str, list[int]] = {}
        self.truncate: dict[str, int] = {}
        self.ignore_range = False
        self.send_length = True
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def hits(self, name: str) -> int:
        with self._lock:
            return sum(1 for n, _ in self.requests if n == name)

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(owner: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection; close ends the body

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            name = self.path.lstrip("/")
            range_header = self.headers.get("Range")
            with owner._lock:
                owner.requests.append((name, range_header))
                cuts = owner.cut.get(name)
                cut = cuts.pop(0) if cuts else None
            path = owner.root / name
            if not path.is_file():
                self.send_error(404, "Not Found")
                return
            data = path.read_bytes()
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and not owner.ignore_range:
                start = int(match[1])
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
            if owner.send_length:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if name in owner.truncate:
                body = body[:max(0, owner.truncate[name] - start)]
            if cut is not None:
                body = body[:cut]
            self.wfile.write(body)
            self.wfile.flush()
            if len(body) < len(data) - start:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    return Handler
