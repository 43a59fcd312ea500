"""Real HTTP/HTTPS servers for the HTTP prober's and the HTTP client's tests.

`HttpServer` is the standard library's threaded http.server on 127.0.0.1 (or ::1), with routes the test
sets; it records every request and the TLS server name (SNI) clients send. `raw_server` is a bare TCP
server on the test's event loop for servers that misbehave: never answering, or answering garbage;
`scripted_server` runs the test's own coroutine on each connection (stalls, replies over several writes).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import AsyncIterator

from tests.support.certs import CertFiles


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: tuple[tuple[str, str], ...] = ()
    chunks: tuple[bytes, ...] | None = None  # sent with Transfer-Encoding: chunked instead of body
    delay: float = 0.0  # server think time before the status line
    chunk_delay: float = 0.0  # pause before each chunk


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lowercase
    body: bytes


@dataclass
class HttpServer:
    host: str = "127.0.0.1"
    tls: CertFiles | None = None
    tls_maximum: ssl.TLSVersion | None = None  # to play an old server
    routes: dict[str, Reply] = field(default_factory=dict)  # path without query -> reply; others get 404
    requests: list[SeenRequest] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)  # SNI of each TLS handshake

    def __enter__(self) -> "HttpServer":
        self._tls_context = self._server_context() if self.tls else None
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def url(self, path: str = "/", host: str | None = None) -> str:
        name = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{'https' if self.tls else 'http'}://{name}:{self.port}{path}"

    def _server_context(self) -> ssl.SSLContext:
        assert self.tls is not None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(Path(self.tls.cert), Path(self.tls.key))
        if self.tls_maximum is not None:
            context.maximum_version = self.tls_maximum
        context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)
        return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, owner: HttpServer) -> None:
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in owner.host else socket.AF_INET
        super().__init__((owner.host, 0), _Handler)

    def finish_request(self, request: socket.socket, client_address: object) -> None:
        context = self.owner._tls_context
        if context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(5)
        try:
            tls_socket = context.wrap_socket(request, server_side=True)
        except OSError:
            return  # the prober refused our certificate: that is what some tests want
        try:
            super().finish_request(tls_socket, client_address)
        finally:
            tls_socket.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        owner.requests.append(SeenRequest(self.command, self.path, headers, body))
        reply = owner.routes.get(self.path.split("?")[0], Reply(404, b"not found"))
        time.sleep(reply.delay)
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        if reply.chunks is None:
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in reply.chunks:
            time.sleep(reply.chunk_delay)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"0\r\n\r\n")

    do_POST = do_PUT = do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that runs `script` on each connection, then hangs up. Yields the port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def raw_server(reply: bytes | None) -> AbstractAsyncContextManager[int]:
    """A TCP server on 127.0.0.1 that reads a request head, then sends reply and hangs up; with reply None
    it never answers and holds the connection until the client leaves. Yields the port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if reply is None:
            while await reader.read(4096):
                pass
            return
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()

    return scripted_server(answer)
