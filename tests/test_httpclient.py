"""The one HTTP client (foundation/httpclient.py) against real servers on loopback: the project's own HTTP server,
and plain asyncio servers that send chunked, gzip, stalled, oversized or garbage replies byte for byte."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from foundation.config.remote_write import PushTls
from foundation.config.types import Secret
from foundation.httpclient import Endpoint, HttpClient, ProtocolError, tls_client_context
from foundation.httpserver import HttpServer, Request, Response
from tests.support.certs import make_ca, make_leaf, make_self_signed
from tests.support.httpd import raw_server, scripted_server
from tests.test_collector_agents import client_cert

PAGE = ("xin chào " * 400).encode()  # over the server's gzip threshold

@asynccontextmanager
async def project_server(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[tuple[int, list[Request]]]:
    """foundation.httpserver with /page (bytes), /stream (chunked), /echo (method, body); yields (port, requests)."""
    seen: list[Request] = []

    async def page(request: Request) -> Response:
        seen.append(request)
        return Response(200, PAGE)

    async def stream(request: Request) -> Response:
        seen.append(request)
        return Response(200, iter([PAGE[:1000], PAGE[1000:]]))

    async def echo(request: Request) -> Response:
        seen.append(request)
        return Response.text(200, f"{request.method} {len(request.body)}")

    server = HttpServer({"/page": page, "/stream": stream, "/echo": echo}, ssl_context=ssl_context)
    _, port = await server.start("127.0.0.1", 0)
    try:
        yield port, seen
    finally:
        await server.close()


def client(port: int, path: str = "/page", timeout: float = 5.0, **kwargs) -> HttpClient:
    return HttpClient(Endpoint.from_url(f"http://127.0.0.1:{port}{path}", timeout), "netmon-test/1", **kwargs)


async def test_requests_reuse_one_kept_alive_connection():
    async with project_server() as (port, seen):
        http = client(port)
        first, second = await http.get(), await http.get()
        http.close()
    assert first.status == second.status == 200 and first.body == second.body == PAGE
    assert seen[0].peer == seen[1].peer  # same client port: same connection


async def test_without_keep_alive_each_request_says_close_and_gets_its_own_connection():
    async with project_server() as (port, seen):
        http = client(port, keep_alive=False)
        await http.get()
        await http.get()
    assert [request.headers["connection"] for request in seen] == ["close", "close"]
    assert seen[0].peer != seen[1].peer


async def test_post_sends_its_body_with_content_length_user_agent_and_authorization():
    async with project_server() as (port, seen):
        endpoint = Endpoint.from_url(f"http://127.0.0.1:{port}/echo", 5.0, authorization=Secret("Bearer t0k3n", "test"))
        http = HttpClient(endpoint, "netmon-test/1")
        reply = await http.post(b"x" * 300, (("Content-Type", "application/x-protobuf"),))
        http.close()
    assert reply.text == "POST 300"
    headers = seen[0].headers
    assert headers["content-length"] == "300" and headers["content-type"] == "application/x-protobuf"
    assert headers["user-agent"] == "netmon-test/1" and headers["authorization"] == "Bearer t0k3n"
    assert headers["host"] == f"127.0.0.1:{port}"


async def test_a_chunked_body_is_joined():
    async with project_server() as (port, _):
        reply = await client(port, "/stream", keep_alive=False).get()
    assert reply.headers["transfer-encoding"] == "chunked"
    assert reply.body == PAGE


@pytest.mark.parametrize("path", ["/page", "/stream"], ids=["content-length", "chunked"])
async def test_a_gzip_body_asked_for_is_inflated(path):
    async with project_server() as (port, seen):
        reply = await client(port, path, keep_alive=False).get(accept_gzip=True)
    assert seen[0].headers["accept-encoding"] == "gzip"
    assert reply.headers["content-encoding"] == "gzip"
    assert reply.body == PAGE


async def test_gzip_is_not_asked_for_unless_wanted():
    async with project_server() as (port, seen):
        reply = await client(port, keep_alive=False).get()
    assert "accept-encoding" not in seen[0].headers
    assert reply.body == PAGE


async def test_a_body_delimited_by_close_is_read_to_the_end():
    async with raw_server(b"HTTP/1.1 200 OK\r\n\r\n" + PAGE) as port:
        http = client(port)
        reply = await http.get()
    assert reply.body == PAGE
    assert http._writer is None  # nothing else can follow on that connection


async def test_a_304_has_no_body_and_keeps_the_connection():
    async def not_modified(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\n\r\n')
        await reader.read()  # until the client closes

    async with scripted_server(not_modified) as port:
        http = client(port)
        reply = await http.get((("If-None-Match", '"abc"'),))
        kept = http._writer is not None
        http.close()
    assert (reply.status, reply.body, reply.headers["etag"]) == (304, b"", '"abc"')
    assert kept


async def test_a_kept_connection_the_server_closed_is_replaced_once():
    connections = 0

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(1)  # the body: a clean close, no reset that could discard the reply
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # keep-alive by default, then hangs up anyway

    async with scripted_server(answer_once) as port:
        http = client(port)
        statuses = [(await http.post(b"a")).status, (await http.post(b"b")).status]
        http.close()
    assert statuses == [204, 204]
    assert connections == 2


@pytest.mark.parametrize(
    "reply, message",
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "not an HTTP status line"),
        (b"HTTP/1.1 20x OK\r\n\r\n", "not an HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "not a header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n", "invalid Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "incomplete"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", "chunk data longer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", "incomplete"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"\r\n", "more than 100 header lines"),
    ],
    ids=["not-http", "bad-status", "header-without-colon", "bad-length", "truncated", "bad-chunk-size", "long-chunk",
         "truncated-chunk", "too-many-headers"],
)
async def test_protocol_garbage_raises_protocol_error_and_drops_the_connection(reply, message):
    async with raw_server(reply) as port:
        http = client(port)
        with pytest.raises(ProtocolError, match=message):
            await http.get()
    assert http._writer is None


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + b"a" * 2000,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"400\r\n" + b"a" * 1024 + b"\r\n" + b"400\r\n" + b"a" * 1024 + b"\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 2000,
    ],
    ids=["content-length", "chunked", "until-close"],
)
async def test_a_body_over_the_limit_is_refused(reply):
    async with raw_server(reply) as port:
        with pytest.raises(ProtocolError, match="reply larger than 1500 bytes"):
            await client(port).get(max_body=1500)


async def test_a_gzip_body_is_refused_as_soon_as_it_inflates_past_the_limit():
    bomb = gzip.compress(b"\0" * (50 << 20))  # 50 MB from about 50 kB
    async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(bomb), bomb)) as port:
        with pytest.raises(ProtocolError, match=f"reply larger than {1 << 20} bytes"):
            await client(port).get(max_body=1 << 20, accept_gzip=True)


async def test_a_broken_gzip_body_is_a_protocol_error():
    broken = gzip.compress(PAGE)[:-20]
    async with raw_server(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(broken), broken)) as port:
        with pytest.raises(ProtocolError, match="gzip"):
            await client(port).get(accept_gzip=True)


async def test_truncate_keeps_the_start_of_a_long_reply_and_opens_a_new_connection_next():
    async with project_server() as (port, seen):
        http = client(port)
        reply = await http.post(b"", max_body=100, truncate=True)
        await http.post(b"")
        http.close()
    assert reply.body == PAGE[:100]
    assert seen[0].peer != seen[1].peer


async def test_one_deadline_covers_the_whole_body():
    async def stall_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst part")
        await writer.drain()
        await asyncio.sleep(10)

    async with scripted_server(stall_mid_body) as port:
        http = client(port, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await http.get()
    assert time.monotonic() - started < 2
    assert http._writer is None


async def test_a_refused_connection_is_an_os_error():
    async with raw_server(b"") as port:
        pass  # closed again: nothing listens on the port now
    with pytest.raises(OSError):
        await client(port).get()


# --- TLS


@pytest.fixture
def pki(tmp_path):
    ca = make_ca(tmp_path / "pki")
    return {"ca": ca, "server": make_leaf(tmp_path / "pki", ca, "collector", names=("collector.test",)),
            "client": client_cert(tmp_path / "pki", ca, "agent-1")}


def server_context(server, client_ca=None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(server.cert), str(server.key))
    if client_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(client_ca.cert))
    return context


async def test_https_checks_the_server_against_the_ca_file_under_the_configured_name(pki):
    async with project_server(server_context(pki["server"])) as (port, _):
        tls = PushTls(ca_file=str(pki["ca"].cert), server_name="collector.test")
        reply = await HttpClient(Endpoint.configured(f"https://127.0.0.1:{port}/page", 5.0, tls, None), keep_alive=False).get()
        wrong_name = HttpClient(Endpoint.configured(f"https://127.0.0.1:{port}/page", 5.0, PushTls(ca_file=str(pki["ca"].cert)), None))
        with pytest.raises(ssl.SSLCertVerificationError):
            await wrong_name.get()
    assert reply.body == PAGE


async def test_mtls_shows_the_client_certificate_and_the_token(pki):
    async with project_server(server_context(pki["server"], client_ca=pki["ca"])) as (port, seen):
        tls = PushTls(ca_file=str(pki["ca"].cert), cert_file=str(pki["client"].cert), key_file=str(pki["client"].key),
                      server_name="collector.test")
        endpoint = Endpoint.configured(f"https://127.0.0.1:{port}/echo", 5.0, tls, Secret("t0k3n", "test"))
        reply = await HttpClient(endpoint, keep_alive=False).post(b"abc")
    assert reply.text == "POST 3"
    assert seen[0].headers["authorization"] == "Bearer t0k3n"
    assert dict(pair[0] for pair in seen[0].tls_peer_cert["subject"])["commonName"] == "agent-1"


async def test_insecure_skip_verify_accepts_an_unknown_certificate(tmp_path):
    async with project_server(server_context(make_self_signed(tmp_path))) as (port, _):
        url = f"https://127.0.0.1:{port}/page"
        with pytest.raises(ssl.SSLCertVerificationError):
            await HttpClient(Endpoint.configured(url, 5.0, PushTls(), None), keep_alive=False).get()
        reply = await HttpClient(Endpoint.configured(url, 5.0, PushTls(insecure_skip_verify=True), None), keep_alive=False).get()
    assert reply.body == PAGE


def test_tls_settings_apply_to_https_urls_only(pki):
    tls = PushTls(ca_file=str(pki["ca"].cert))
    assert Endpoint.configured("http://127.0.0.1:1/x", 1.0, tls, None).ssl_context is None
    assert isinstance(tls_client_context(tls), ssl.SSLContext)
    assert tls_client_context(tls).minimum_version == ssl.TLSVersion.TLSv1_2
