"""What the mail targets share: a Connection (agents/probes/mailproto.py) over the fuzzer's bytes, as a server
that said them would give, and the contract that only MailError escapes a conversation."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from agents.probes.mailproto import Connection, MailAuth, MailError
from foundation.config.types import SecretRef
from tests.fuzz.harness import KeptWriter, fed_reader, run

AUTH = MailAuth(username="probe@test.local", password=SecretRef("secret", "fuzz"))


def connection(data: bytes) -> Connection:
    return Connection(fed_reader(data), KeptWriter(), time.monotonic() + 5.0)


def converse(conversation: Callable[[Connection], Awaitable[None]], data: bytes) -> None:
    """Run the prober's side of a conversation against these server bytes; only MailError may end it early."""
    try:
        run(conversation(connection(data)))
    except MailError:
        pass
