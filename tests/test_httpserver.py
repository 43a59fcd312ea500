"""The shared asyncio HTTP server: answers real clients, rejects malformed input with a 4xx and a reason."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from foundation.httpserver import HttpServer, Request, Response, require_method


async def echo(request: Request) -> Response:
    require_method(request, "GET", "POST")
    return Response.text(200, f"{request.method} {request.path} {request.arg('q')} {len(request.body)}")


@pytest.fixture
async def server():
    srv = HttpServer({"/echo": echo}, max_body_bytes=1000)
    host, port = await srv.start("127.0.0.1", 0)
    yield port
    await srv.close()


@contextlib.asynccontextmanager
async def serving(routes: dict) -> AsyncIterator[int]:
    """A server with these routes on a free port, closed after."""
    srv = HttpServer(routes)
    _, port = await srv.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await srv.close()


async def exchange(port: int, raw: bytes, read_all: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read() if read_all else reader.read(65536), 5)
    writer.close()
    return data


async def test_get_with_query_and_keep_alive_serves_two_requests_on_one_connection(server):
    request = b"GET /echo?q=xin%20ch%C3%A0o HTTP/1.1\r\nHost: x\r\n\r\n"
    data = await exchange(server, request + request.replace(b"Host: x", b"Host: x\r\nConnection: close"))
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert "GET /echo xin chào 0".encode() in data


async def test_post_body_is_read_by_content_length(server):
    data = await exchange(server, b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"POST /echo None 5")


@pytest.mark.parametrize(
    "raw, status, reason",
    [
        (b"NONSENSE\r\n\r\n", 400, b"malformed request line"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413, b"exceeds the limit of 1000 bytes"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400, b"invalid Content-Length"),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411, b"send Content-Length"),
        (b"GET /echo HTTP/1.1\r\nbad header line\r\n\r\n", 400, b"malformed header line"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, b"request line too long"),
        (b"DELETE /echo HTTP/1.1\r\nConnection: close\r\n\r\n", 405, b"method DELETE not allowed"),
        (b"GET /missing HTTP/1.1\r\nConnection: close\r\n\r\n", 404, b"no such path"),
    ],
)
async def test_malformed_requests_get_a_4xx_with_the_reason(server, raw, status, reason):
    data = await exchange(server, raw)
    assert data.startswith(f"HTTP/1.1 {status}".encode()), data[:100]
    assert reason in data


async def test_every_error_reply_the_server_gives_itself_is_told_to_the_observer_with_the_request_as_read():
    """A program counts its replies: those the server gives before or instead of a handler must reach it too."""
    seen: list[tuple[str | None, str | None, int]] = []

    async def crash(request: Request) -> Response:
        raise RuntimeError("bug")

    def observe(request: Request | None, peer: str, error) -> None:
        assert peer.startswith("127.0.0.1:")
        seen.append((request.path if request else None, request.headers.get("authorization") if request else None, error.status))

    srv = HttpServer({"/echo": echo, "/crash": crash}, max_body_bytes=1000, on_error=observe)
    _, port = await srv.start("127.0.0.1", 0)
    try:
        await exchange(port, b"POST /echo HTTP/1.1\r\nAuthorization: Bearer t\r\nContent-Length: 5000\r\n\r\n")
        await exchange(port, b"DELETE /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
        await exchange(port, b"GET /crash HTTP/1.1\r\nConnection: close\r\n\r\n")
        await exchange(port, b"NONSENSE\r\n\r\n")
        await exchange(port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")  # a success is not an error
    finally:
        await srv.close()
    assert seen == [("/echo", "Bearer t", 413), ("/echo", None, 405), ("/crash", None, 500), (None, None, 400)]


async def test_too_many_headers_is_431(server):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    data = await exchange(server, b"GET /echo HTTP/1.1\r\n" + headers + b"\r\n")
    assert data.startswith(b"HTTP/1.1 431")


async def test_large_responses_are_gzipped_when_the_client_accepts_it():
    async def big(request: Request) -> Response:
        return Response.text(200, "x" * 5000)

    srv = HttpServer({"/big": big})
    _, port = await srv.start("127.0.0.1", 0)
    try:
        data = await exchange(port, b"GET /big HTTP/1.1\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
    finally:
        await srv.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head
    import gzip

    assert gzip.decompress(body) == b"x" * 5000


async def test_a_client_that_sends_nothing_is_dropped_without_blocking_others(server):
    idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server)
    try:
        data = await exchange(server, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert data.startswith(b"HTTP/1.1 200")
    finally:
        idle_writer.close()


async def test_iterable_bodies_are_streamed_chunked_and_gzipped():
    import gzip
    import urllib.request

    async def stream(request: Request) -> Response:
        return Response(200, (f"line {i}\n".encode() for i in range(5000)))

    srv = HttpServer({"/stream": stream})
    _, port = await srv.start("127.0.0.1", 0)
    try:
        data = await exchange(port, b"GET /stream HTTP/1.1\r\nConnection: close\r\n\r\n")
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head
        request = urllib.request.Request(f"http://127.0.0.1:{port}/stream", headers={"Accept-Encoding": "gzip"})
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(None, lambda: urllib.request.urlopen(request, timeout=5))
        assert response.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(await loop.run_in_executor(None, response.read)).decode()
    finally:
        await srv.close()
    assert text.splitlines() == [f"line {i}" for i in range(5000)]


async def test_http10_clients_get_a_streamed_body_whole_with_content_length():
    async def stream(request: Request) -> Response:
        return Response(200, (f"line {i}\n".encode() for i in range(100)))

    srv = HttpServer({"/stream": stream})
    _, port = await srv.start("127.0.0.1", 0)
    try:
        data = await exchange(port, b"GET /stream HTTP/1.0\r\nConnection: close\r\n\r\n")
    finally:
        await srv.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding" not in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert body.decode().splitlines()[-1] == "line 99"


async def test_one_address_holding_connections_open_gets_only_its_share_and_the_rest_are_refused():
    """A slowloris client cannot take every connection: beyond its share, new ones are closed at once and counted."""
    srv = HttpServer({"/echo": echo}, max_body_bytes=1000, max_connections=4)
    _, port = await srv.start("127.0.0.1", 0)
    held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    try:
        for _, writer in held:
            writer.write(b"GET /echo HTTP/1.1\r\n")  # a request that never finishes
            await writer.drain()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
        writer.close()
        assert srv.refused_connections == 1
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.2)  # the server notices the held connections closing
    data = await exchange(port, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200")
    await srv.close()


async def test_head_is_answered_like_get_without_a_body():
    async def page(request: Request) -> Response:
        require_method(request, "GET")
        return Response.text(200, "a page", ETag='"v1"')

    async with serving({"/page": page}) as port:
        get = await exchange(port, b"GET /page HTTP/1.1\r\nConnection: close\r\n\r\n")
        head = await exchange(port, b"HEAD /page HTTP/1.1\r\nConnection: close\r\n\r\n")
    get_head, _, get_body = get.partition(b"\r\n\r\n")
    assert get_body == b"a page" and head == get_head + b"\r\n\r\n"  # the same head, Content-Length included


async def test_head_of_a_streamed_body_and_of_a_refusal_sends_no_body():
    async def stream(request: Request) -> Response:
        require_method(request, "GET")
        return Response(200, (f"line {i}\n".encode() for i in range(100)))

    async def post_only(request: Request) -> Response:
        require_method(request, "POST")
        return Response(204)

    async with serving({"/stream": stream, "/post": post_only}) as port:
        # keep-alive: a body sent by mistake would be read as the start of the next reply
        streamed = await exchange(port, b"HEAD /stream HTTP/1.1\r\n\r\nHEAD /post HTTP/1.1\r\nConnection: close\r\n\r\n")
    first, refused, rest = streamed.split(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in first
    assert refused.startswith(b"HTTP/1.1 405") and rest == b""


async def test_a_prefix_route_serves_every_path_under_it_that_no_exact_route_serves():
    def answering(text: str):
        async def handler(request: Request) -> Response:
            return Response.text(200, text)

        return handler

    routes = {"/a/*": answering("a"), "/a/b/*": answering("a/b"), "/a/exact": answering("exact")}
    async with serving(routes) as port:
        bodies = [
            (await exchange(port, f"GET {path} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())).partition(b"\r\n\r\n")[2]
            for path in ("/a/x/y", "/a/b/c", "/a/exact", "/a", "/ab")
        ]
    assert bodies[:3] == [b"a", b"a/b", b"exact"]
    assert all(body.startswith(b"no such path") for body in bodies[3:])
