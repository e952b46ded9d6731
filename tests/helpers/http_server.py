"""A small threaded HTTP file server on 127.0.0.1 for download tests.

    with FileServer(directory) as server:
        url = server.url("archive.tar")
        server.cut["archive.tar"] = [1000]      # the next response stops after 1000 body bytes
        server.truncate["archive.tar"] = 5000   # every response ends at file byte 5000
        server.ignore_range = True              # answer Range requests with the whole file (200)
        server.send_length = False              # no Content-Length: the close ends the body
        server.etag = False                     # send no ETag (default: a strong content hash)
        server.last_modified = False            # send no Last-Modified (default: file mtime)
        server.if_range = False                 # ignore If-Range (serve the range regardless)
        server.delay = 0.3                      # seconds to wait before every response body
        server.versions["archive.tar"] = [b"v2"]  # after the next response the file becomes v2
        server.headers                          # [(name, request headers as a dict), ...]
        server.requests                         # [(name, Range header or None), ...]
        server.hits("archive.tar")              # GET requests for that file

Responses announce the full ``Content-Length`` (or range length) unless ``send_length`` is
False, so a cut-short or truncated body looks like a dropped connection to the client (without
the length, like a complete transfer). ``Range: bytes=N-`` is answered with
``206`` and ``Content-Range``, or ``416`` past the end; with ``If-Range`` (RFC 9110 13.1.5) only
when it equals the file's current ETag or Last-Modified, else ``200`` with the whole file. The
file is read again on every request, so a test may change it between requests. Unknown names
get ``404``.
"""
from __future__ import annotations

import email.utils
import hashlib
import re
import socket
import threading
import time
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
        self.etag = True
        self.last_modified = True
        self.if_range = True
        self.delay = 0.0
        self.versions: dict[str, list[bytes]] = {}
        self.headers: list[tuple[str, dict]] = []
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
                owner.headers.append((name, dict(self.headers.items())))
                cuts = owner.cut.get(name)
                cut = cuts.pop(0) if cuts else None
            path = owner.root / name
            if not path.is_file():
                self.send_error(404, "Not Found")
                return
            data = path.read_bytes()
            etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
            modified = email.utils.formatdate(path.stat().st_mtime, usegmt=True)
            validators = ([etag] if owner.etag else []) + \
                ([modified] if owner.last_modified else [])
            if_range = self.headers.get("If-Range")
            same = if_range is None or not owner.if_range or if_range in validators
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if match and same and not owner.ignore_range:
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
            if owner.etag:
                self.send_header("ETag", etag)
            if owner.last_modified:
                self.send_header("Last-Modified", modified)
            if owner.send_length:
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if name in owner.truncate:
                body = body[:max(0, owner.truncate[name] - start)]
            if cut is not None:
                body = body[:cut]
            time.sleep(owner.delay)
            self.wfile.write(body)
            self.wfile.flush()
            with owner._lock:
                new = owner.versions.get(name)
                if new:
                    path.write_bytes(new.pop(0))
            if len(body) < len(data) - start:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    return Handler
