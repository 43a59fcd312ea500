"""A remote_write receiver on loopback that answers 204: for tests that count what a sender sent, and for benchmarks
that must not charge the receiver's work to the sender."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

from foundation import remote_write as rw


@contextmanager
def remote_write_sink(keep: bool = False) -> Iterator[tuple[str, list[list[rw.Series]]]]:
    """Its write URL and, with `keep`, every request's decoded series in arrival order (else bodies are read unread)."""
    received: list[list[rw.Series]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if keep:
                received.append(rw.decode(body, 1 << 30))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/write", received
    finally:
        server.shutdown()
        server.server_close()
