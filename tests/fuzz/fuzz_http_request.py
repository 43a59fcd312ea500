"""Requests to the agent's and the collector's HTTP server (foundation/httpserver.py): whatever a client sends,
the server raises nothing, answers only with well-formed HTTP/1.1 responses of the statuses it documents, never
hands a handler a body over its cap, and says `Connection: close` on the last response it sends before hanging up."""

from __future__ import annotations

from foundation import httpserver
from foundation.httpserver import HttpServer, Request, Response
from tests.fuzz.harness import KeptWriter, fed_reader, run
from tests.fuzz.http_tokens import HTTP_TOKENS as DICTIONARY  # noqa: F401 - read by tests/fuzz/run.py

MAX_BODY = 64
STATUSES = {200, 400, 404, 405, 411, 413, 414, 431}


class _NotingServer(HttpServer):
    """Notes the method of every request it parsed: the answer to a HEAD has no body."""

    def __init__(self) -> None:
        super().__init__({"/echo": _echo, "/stream": _stream, "/p/*": _echo}, max_body_bytes=MAX_BODY, max_connections=10)
        self.methods: list[str] = []

    async def _dispatch(self, request: Request) -> Response:
        self.methods.append(request.method)
        return await super()._dispatch(request)


async def _echo(request: Request) -> Response:
    httpserver.require_method(request, "GET", "POST")
    assert len(request.body) <= MAX_BODY, f"a handler got a body of {len(request.body)} bytes, over the cap of {MAX_BODY}"
    return Response.text(200, f"{request.method} {len(request.body)}")


async def _stream(request: Request) -> Response:
    return Response(200, iter([b"a" * 700, b"", b"b" * 700]))


def check(data: bytes) -> None:
    writer, server = KeptWriter(), _NotingServer()
    run(server._serve(fed_reader(data, httpserver.MAX_REQUEST_LINE), writer))
    assert writer.closed, "the connection was not closed after the client's EOF"
    check_responses(bytes(writer.out), server.methods)


def check_responses(out: bytes, methods: list[str]) -> None:
    """The server's output is a sequence of whole responses, one per request it parsed and at most one refusal
    after them; nothing follows a response that says Connection: close."""
    pos, index = 0, 0
    while pos < len(out):
        head_only = index < len(methods) and methods[index] == "HEAD"
        index += 1
        head_end = out.find(b"\r\n\r\n", pos)
        assert head_end != -1, f"a response head without its end: {out[pos:pos + 80]!r}"
        status_line, *header_lines = out[pos:head_end].decode("latin-1").split("\r\n")
        version, status, _phrase = status_line.split(" ", 2)
        assert version == "HTTP/1.1" and int(status) in STATUSES, f"unexpected status line {status_line!r}"
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(": ")
            assert name and name not in headers, f"bad or repeated header line {line!r}"
            headers[name.lower()] = value
        pos = head_end + 4
        if head_only:
            pass
        elif "content-length" in headers:
            pos += int(headers["content-length"])
        else:
            assert headers.get("transfer-encoding") == "chunked", f"a response without a length: {headers}"
            pos = _skip_chunks(out, pos)
        assert pos <= len(out), "a response body shorter than its length"
        if headers.get("connection") == "close":
            assert pos == len(out), "bytes after a response that said Connection: close"
    assert len(methods) <= index <= len(methods) + 1, f"{index} responses to {len(methods)} requests handled"


def _skip_chunks(out: bytes, pos: int) -> int:
    while True:
        line_end = out.index(b"\r\n", pos)
        size = int(out[pos:line_end], 16)
        pos = line_end + 2 + size + 2
        if size == 0:
            return pos


def seeds() -> list[bytes]:
    return [
        b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /stream HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
        b"HEAD /p/x?y=1&z=%20 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /echo HTTP/1.0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\n",
        b"DELETE /nowhere HTTP/1.1\r\nX: 1\r\nX: 2\r\nConnection: close\r\n\r\n",
    ]
