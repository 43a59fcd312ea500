"""A mail server that never stops talking: an endless multi-line SMTP reply, an IMAP command answered by endless
untagged lines, a POP3 list without its final dot. Each conversation ends as protocol_error once the server has
sent MAX_READ_BYTES (8 MiB), instead of growing in memory until the probe's deadline."""

from __future__ import annotations

import asyncio
import time

import pytest

from agents.probes import imap, pop3, smtp
from agents.probes.mailproto import MAX_READ_BYTES, Connection, MailError
from tests.support.httpd import scripted_server

PAD = b"x" * 1000 + b"\r\n"  # long lines: the cap is on bytes, and fewer lines keep the test quick


def endless(first: bytes, line: bytes):
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(first)
        block = line * 64
        for _ in range(4 * MAX_READ_BYTES // len(block)):  # bounded: four times what the prober may read
            writer.write(block)
            await writer.drain()

    return script


async def conversation(port: int) -> Connection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return Connection(reader, writer, time.monotonic() + 60)


@pytest.mark.parametrize("first, line, talk", [
    (b"220-mail.test\r\n", b"220-" + PAD, lambda c: smtp.read_reply(c)),
    (b"* OK ready\r\n", b"* OK " + PAD, lambda c: imap.ImapSession(c).refresh_capabilities()),
    (b"+OK ready\r\n+OK capa\r\n", b"X-" + PAD, lambda c: pop3.Pop3Session(c).refresh_capabilities()),
], ids=["smtp", "imap", "pop3"])
async def test_a_server_that_never_stops_talking_ends_as_a_protocol_error(first, line, talk):
    async with scripted_server(endless(first, line)) as port:
        connection = await conversation(port)
        started = time.monotonic()
        try:
            with pytest.raises(MailError) as error:
                if first.startswith(b"+OK") or first.startswith(b"* OK"):
                    await connection.read_line()  # the greeting
                await talk(connection)
        finally:
            connection.close()
    assert error.value.failure.value == "protocol_error" and f"more than {MAX_READ_BYTES} bytes" in error.value.detail
    assert time.monotonic() - started < 30
