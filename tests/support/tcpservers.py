"""Small line-protocol servers on 127.0.0.1 for the TCP prober's tests, run on the test's own event loop.

The server greets with a banner, answers known commands one line each, and can speak TLS from the start
(implicit) or after a STARTTLS command, like SMTP/IMAP/POP3 servers do.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

from tests.support.certs import CertFiles


def server_tls_context(cert: CertFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert, cert.key)
    return context


@dataclass
class LineServer:
    banner: list[str] = field(default_factory=lambda: ["220 ready"])  # lines sent on connect; [] sends nothing
    replies: dict[str, list[str]] = field(default_factory=lambda: {"PING": ["PONG"]})
    hang_up_after_banner: bool = False
    reset_on_connect: bool = False  # close with a TCP RST before saying anything
    implicit_tls: ssl.SSLContext | None = None
    starttls: ssl.SSLContext | None = None  # answers STARTTLS with "220 go ahead", then upgrades

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.reset_on_connect:
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            await self._send(writer, self.banner)
            if self.hang_up_after_banner:
                return
            while line := await reader.readline():
                command = line.decode("utf-8", "replace").strip()
                if command == "STARTTLS" and self.starttls is not None:
                    await self._send(writer, ["220 go ahead"])
                    await writer.start_tls(self.starttls)
                    continue
                await self._send(writer, self.replies.get(command, ["500 unknown command"]))
        except (OSError, ssl.SSLError):
            pass  # the prober may hang up at any point
        finally:
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, lines: list[str]) -> None:
        writer.write("".join(f"{line}\r\n" for line in lines).encode())
        await writer.drain()


@asynccontextmanager
async def serving(server: LineServer) -> AsyncIterator[str]:
    """Run server on a free 127.0.0.1 port; yields 'host:port'. On exit, ends every open connection."""
    open_connections: dict[asyncio.Task, asyncio.StreamWriter] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        open_connections[task] = writer
        try:
            await server.handle(reader, writer)
        finally:
            open_connections.pop(task, None)

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server.implicit_tls)
    async with listener:
        yield f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        # end the handlers by closing their sockets: a cancelled handler task makes asyncio log an error
        for writer in open_connections.values():
            writer.transport.abort()
        if open_connections:
            await asyncio.wait(list(open_connections), timeout=2)
