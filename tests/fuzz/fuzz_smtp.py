"""SMTP replies (agents/probes/smtp.py): whatever a server says, reading replies and EHLO capabilities raises
only MailError, and a reply read has the code of its last line, every line starting with three digits (lines
of one reply with different codes, which RFC 5321 4.2.1 forbids, are read leniently, as smtplib and Postfix do)."""

from __future__ import annotations

from agents.probes import smtp
from agents.probes.mailproto import Connection
from tests.fuzz._mail import AUTH, converse


async def _conversation(connection: Connection) -> None:
    """The session as the prober drives it (greeting, EHLO, AUTH), then any further replies read one by one."""
    session = smtp.SmtpSession(connection, smtp.SmtpSettings(ehlo="netmon.test"))
    await session.read_greeting()
    await session.refresh_capabilities()
    assert all(keyword == keyword.upper() and all(p == p.upper() for p in parameters)
               for keyword, parameters in session.capabilities.items())
    await session.login(AUTH)
    for _ in range(50):
        reply = await smtp.read_reply(connection)
        assert reply.lines[-1][:3] == f"{reply.code:03d}" and all(line[:3].isdigit() for line in reply.lines), reply


def check(data: bytes) -> None:
    converse(_conversation, data)


def seeds() -> list[bytes]:
    return [
        b"220 mail.test.local ESMTP Postfix\r\n250-mail.test.local\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
        b"250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250-AUTH=PLAIN LOGIN\r\n250 8BITMIME\r\n235 2.7.0 ok\r\n221 2.0.0 Bye\r\n",
        b"554 5.7.1 no\r\n", b"220-multi\n220\n", b"334 VXNlcm5hbWU6\r\n235 2.7.0 ok\r\n",
    ]
