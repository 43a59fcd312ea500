"""A mail Connection (agents/probes/mailproto.py) over the fuzzer's bytes, as a server that said them would give."""

from __future__ import annotations

import time

from agents.probes.mailproto import Connection
from tests.fuzz.harness import KeptWriter, fed_reader


def connection(data: bytes) -> Connection:
    return Connection(fed_reader(data), KeptWriter(), time.monotonic() + 5.0)
