"""Replies to the one HTTP client (foundation/httpclient.py: push, forward, config fetch, scrape): whatever a
server sends, only what `HttpClient.get/post` documents escapes (ProtocolError; the client turns incomplete and
oversized reads into it), the body never exceeds the caller's cap (gzip inflated included), and a reply read as
gzip is exactly what zlib inflates."""

from __future__ import annotations

import asyncio
import gzip
import zlib

from foundation.httpclient import BodyLimit, Endpoint, HttpClient, ProtocolError
from tests.fuzz.harness import KeptWriter, fed_reader, run
from tests.fuzz.http_tokens import HTTP_TOKENS as DICTIONARY  # noqa: F401 - read by tests/fuzz/run.py

# the first input byte picks how the client asks: cap, truncate or refuse, gzip or not
LIMITS = [BodyLimit(16, False), BodyLimit(16, True), BodyLimit(1 << 12, False), BodyLimit(1 << 12, True)]


def check(data: bytes) -> None:
    if not data:
        return
    limit, gunzip = LIMITS[data[0] & 3], bool(data[0] & 4)
    client = HttpClient(Endpoint.from_url("http://127.0.0.1:9/x", 5.0))
    client._reader, client._writer = fed_reader(data[1:]), KeptWriter()
    try:
        reply = run(client._exchange(b"GET /x HTTP/1.1\r\n\r\n", limit, gunzip))
    except (ProtocolError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return  # HttpClient._request turns the last two into ProtocolError
    assert 100 <= reply.status <= 999
    assert len(reply.body) <= limit.max_bytes, f"a body of {len(reply.body)} bytes past the cap of {limit.max_bytes}"
    encoding = reply.headers.get("content-encoding", "").strip().lower()
    if gunzip and encoding == "gzip" and not limit.truncate and "transfer-encoding" not in reply.headers:
        assert reply.body == zlib.decompressobj(wbits=31).decompress(_raw_body(data[1:])), "gzip body read differently from zlib"


def _raw_body(data: bytes) -> bytes:
    """The body of a reply without Transfer-Encoding, read the plain way: lines end in LF (CR before it
    dropped), the head ends at the first empty line after the status line, then Content-Length or all the rest."""
    pos, length = data.index(b"\n") + 1, None
    while True:
        end = data.index(b"\n", pos)
        line, pos = data[pos:end].rstrip(b"\r"), end + 1
        if not line:
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return data[pos:] if length is None else data[pos:pos + length]


def seeds() -> list[bytes]:
    packed = gzip.compress(b"probe_success 1\n" * 20)
    return [
        b"\x02HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"\x06HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(packed), packed),
        b"\x03HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n3\r\nabc\r\n0\r\nTrailer: 1\r\n\r\n",
        b"\x01HTTP/1.0 404 Not Found\r\nConnection: close\r\n\r\nno such path and more than sixteen bytes",
        b"\x00HTTP/1.1 204 No Content\r\n\r\n",
        b"\x06HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(packed), packed),
    ]
