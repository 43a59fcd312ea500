"""POP3 replies (agents/probes/pop3.py): whatever a server says, a session's CAPA, USER/PASS, STAT and QUIT
raise only MailError, and STAT's counts are what the line says."""

from __future__ import annotations

from agents.probes import pop3
from agents.probes.mailproto import Connection
from tests.fuzz._mail import AUTH, converse


async def _conversation(connection: Connection) -> None:
    session = pop3.Pop3Session(connection)
    await session.read_greeting()
    await session.refresh_capabilities()
    await session.login(AUTH)
    messages, size = await session.stat()
    assert messages >= 0 and size >= 0
    await session.quit()


def check(data: bytes) -> None:
    converse(_conversation, data)


def seeds() -> list[bytes]:
    return [
        b"+OK Dovecot ready.\r\n+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nSTLS\r\nUSER\r\nSASL PLAIN\r\n.\r\n"
        b"+OK\r\n+OK Logged in.\r\n+OK 2 320\r\n+OK Logging out.\r\n",
        b"+OK hi\r\n-ERR no CAPA\r\n+OK\r\n-ERR [AUTH] bad\r\n",
        b"+OK hi\r\n+OK\r\n..dotted\r\n.\r\n+OK\r\n+OK\r\n+OK 99999999999999999999 1\r\n",
    ]
