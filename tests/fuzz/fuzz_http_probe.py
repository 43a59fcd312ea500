"""Responses to the HTTP prober's own client (agents/probes/http.py, kept apart for exact phase timing): whatever
a probed server sends, reading the head and the body raises only what the prober turns into a failed probe
(its _ProtocolError, incomplete or oversized reads), and the body kept for regexes and counted stays within the
module's limits, decompressed in bounded steps."""

from __future__ import annotations

import asyncio
import gzip

from agents.probes import http
from tests.fuzz.harness import KeptWriter, fed_reader, run
from tests.fuzz.http_tokens import HTTP_TOKENS as DICTIONARY  # noqa: F401 - read by tests/fuzz/run.py

# the first input byte picks the module: compression, a body size limit, regexes (the body is kept) or not
SETTINGS = [
    http.HttpSettings(**compression, **limit, **regex)
    for compression in ({}, {"compression": "gzip"}, {"compression": "deflate"}, {"compression": "identity"})
    for limit in ({}, {"body_size_limit": 64})
    for regex in ({}, {"fail_if_body_not_matches_regexp": ["x"]})
]


async def _read(data: bytes, settings: http.HttpSettings) -> http.Body:
    reader = fed_reader(data, http.MAX_LINE_BYTES)
    response = await http._send_and_read_head(reader, KeptWriter(), b"GET / HTTP/1.1\r\n\r\n", http.HopTrace(False, 0.0))
    return await http._read_body(reader, "GET", response, settings)


def check(data: bytes) -> None:
    if not data:
        return
    settings = SETTINGS[data[0] % len(SETTINGS)]
    try:
        body = run(_read(data[1:], settings))
    except (http._ProtocolError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return  # http._guarded turns each into a failed probe with its reason
    limit = settings.body_size_limit
    assert limit is None or body.length <= limit, f"a body of {body.length} bytes passed the limit of {limit}"
    assert len(body.kept) <= http.REGEX_BODY_BYTES and body.length >= len(body.kept)


def seeds() -> list[bytes]:
    packed = gzip.compress(b"<title>Cong dich vu cong</title>" * 10)
    return [
        b"\x00HTTP/1.1 200 OK\r\nContent-Length: 5\r\nLast-Modified: Tue, 01 Dec 2026 00:00:00 GMT\r\n\r\nhello",
        b"\x03HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%b" % (len(packed), packed),
        b"\x01HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX: a\r\n folded\r\n\r\n"
        b"5;ext\r\nhello\r\n0\r\nT: 1\r\n\r\n",
        b"\x02HTTP/1.0 302 Found\r\nLocation: /x\r\n\r\nuntil close",
        b"\x04HTTP/1.1 204 No Content\r\n\r\n",
    ]
