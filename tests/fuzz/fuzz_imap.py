"""IMAP responses (agents/probes/imap.py): whatever a server says, a session's CAPABILITY, LOGIN, SELECT and
LOGOUT raise only MailError; literals are read within their cap."""

from __future__ import annotations

from agents.probes import imap
from agents.probes.mailproto import Connection
from tests.fuzz._mail import AUTH, converse


async def _conversation(connection: Connection) -> None:
    session = imap.ImapSession(connection)
    await session.read_greeting()
    await session.refresh_capabilities()
    await session.login(AUTH)
    count = await session.open_mailbox("INBOX", read_only=True)
    assert count >= 0
    await session.logout()


def check(data: bytes) -> None:
    converse(_conversation, data)


def seeds() -> list[bytes]:
    return [
        b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] Dovecot ready.\r\n"
        b"* CAPABILITY IMAP4rev1 LITERAL+ STARTTLS AUTH=PLAIN\r\nn1 OK Capability completed.\r\n"
        b"n2 OK [CAPABILITY IMAP4rev1] Logged in\r\n"
        b"* FLAGS (\\Answered)\r\n* 3 EXISTS\r\n* 0 RECENT\r\nn3 OK [READ-ONLY] Examine completed\r\n"
        b"* BYE Logging out\r\nn4 OK Logout completed.\r\n",
        b"* OK hi\r\nn1 OK\r\n+ go ahead\r\n+ go\r\nn2 NO [AUTHENTICATIONFAILED] bad\r\n",
        b"* OK hi\r\n* 1 FETCH (BODY[HEADER] {12}\r\nSubject: x\r\n)\r\nn1 OK\r\n",
    ]
