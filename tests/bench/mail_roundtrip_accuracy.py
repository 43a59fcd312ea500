"""How close mail_roundtrip's delivery time is to Postfix's own account of the same message.

    .venv/bin/python -m tests.bench.mail_roundtrip_accuracy --rounds 100

Starts the test Postfix + Dovecot (tests/support/mailserver.py, root needed), runs the prober `--rounds` times
over IMAP and over POP3 with their default poll intervals, then reads Postfix's log for each Message-ID:

* the long queue ID (`enable_long_queue_ids = yes`) encodes when Postfix created the queue file, to the
  microsecond;
* `delay=` on the `status=sent` line is the time from the message's arrival to the end of its delivery into the
  Maildir (microseconds, with `delay_logging_resolution_limit = 6`).

So Postfix delivered the message at queue-file time + delay, on the clock the prober reads. The prober says it
saw the message at its acceptance time (probe_mail_roundtrip_sent_timestamp_seconds, the 250 after DATA) plus
its delivery time. The difference seen − delivered is the prober's error: how much later than Postfix's
delivery the prober reported it. (Postfix counts `delay` from MAIL FROM and creates the queue file at the
first RCPT, one round trip later, so the Postfix side is late by that round trip: well under 1 ms here.)
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from agents.catalog import parse_config
from agents.probes.mail_roundtrip import probe
from agents.resources import ProbeResources
from agents.results import ProbeResult, ProbeTarget
from tests.support.mailserver import PROBE, MailSystem, running_mail_system

# src/global/mail_queue.h: base-52 digits without vowels
_SAFE_DIGITS = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"
_USEC_DIGITS = 4
_MESSAGE_ID = re.compile(r"postfix/cleanup\[\d+\]: (\w+): message-id=(<[^>]+>)")
_SENT = re.compile(r"postfix/virtual\[\d+\]: (\w+): .*?delay=([\d.]+),.*status=sent")


@dataclass(frozen=True)
class Measured:
    message_id: str
    accepted_at: float  # unix time of the 250 after DATA
    delivery_seconds: float  # as the prober reported it


def queue_id_time(queue_id: str) -> float:
    """Unix time (µs) encoded in a long Postfix queue ID: seconds, 4 digits of microseconds, 'z', inode."""
    timepart = queue_id[: queue_id.rindex("z")]
    seconds, micros = timepart[:-_USEC_DIGITS], timepart[-_USEC_DIGITS:]
    return _decode(seconds) + _decode(micros) / 1e6


def _decode(digits: str) -> int:
    value = 0
    for digit in digits:
        value = value * 52 + _SAFE_DIGITS.index(digit)
    return value


def postfix_delivered_at(log: str) -> dict[str, float]:
    """Message-ID -> when Postfix finished delivering it (queue-file time + delay)."""
    queue_ids = {queue_id: message_id for queue_id, message_id in _MESSAGE_ID.findall(log)}
    return {queue_ids[queue_id]: queue_id_time(queue_id) + float(delay) for queue_id, delay in _SENT.findall(log) if queue_id in queue_ids}


def module_settings(mail: MailSystem, protocol: str) -> str:
    ca = f"tls_config: {{ca_file: '{mail.ca.cert}'}}"
    auth = f"auth: {{username: {PROBE.address}, password_file: '{mail.password_file(PROBE)}'}}"
    return (
        f"{{mail_from: {PROBE.address}, rcpt_to: {PROBE.address},"
        f" smtp: {{port: {mail.ports['submission']}, {ca}, {auth}}},"
        f" mailbox: {{protocol: {protocol}, port: {mail.ports[protocol]}, {ca}, {auth}}}}}"
    )


def measured(result: ProbeResult) -> Measured:
    values = {sample.metric.name: sample.value for sample in result.samples}
    return Measured(
        message_id=result.detail.split()[0],  # the success detail starts with the Message-ID
        accepted_at=values["probe_mail_roundtrip_sent_timestamp_seconds"],
        delivery_seconds=values["probe_mail_roundtrip_last_delivery_duration_seconds"],
    )


async def run_rounds(mail: MailSystem, protocol: str, rounds: int) -> list[Measured]:
    config = f"agent: {{id: bench, agency: bench}}\nmodules:\n  m:\n    prober: mail_roundtrip\n    timeout: 10s\n    mail_roundtrip: {module_settings(mail, protocol)}\n"
    module = parse_config(config).modules["m"]
    resources = ProbeResources()
    out = []
    for _ in range(rounds):
        result = await probe(ProbeTarget("bench", "127.0.0.1"), module, resources)
        if not result.success:
            raise RuntimeError(f"round failed: {result.failure}: {result.detail}")
        out.append(measured(result))
    return out


def report(protocol: str, rounds: list[Measured], delivered_at: dict[str, float]) -> str:
    errors_ms = [(m.accepted_at + m.delivery_seconds - delivered_at[m.message_id]) * 1000 for m in rounds]
    delivery_ms = [m.delivery_seconds * 1000 for m in rounds]
    postfix_ms = [(delivered_at[m.message_id] - m.accepted_at) * 1000 for m in rounds]
    quantiles = statistics.quantiles(errors_ms, n=20)
    return (
        f"| {protocol} | {len(rounds)} | {statistics.median(delivery_ms):.1f} | {statistics.median(postfix_ms):.1f} "
        f"| {statistics.mean(errors_ms):.1f} | {statistics.median(errors_ms):.1f} | {quantiles[18]:.1f} "
        f"| {min(errors_ms):.1f} | {max(errors_ms):.1f} | {sum(abs(e) <= 50 for e in errors_ms)}/{len(errors_ms)} |"
    )


def wait_for_log(log: Path, message_ids: list[str], timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        delivered_at = postfix_delivered_at(log.read_text(encoding="utf-8", errors="replace"))
        missing = [message_id for message_id in message_ids if message_id not in delivered_at]
        if not missing:
            return delivered_at
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(missing)} Message-IDs not in the Postfix log, e.g. {missing[0]}")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="roundtrips per mailbox protocol")
    args = parser.parse_args()
    lines = [
        "| mailbox | rounds | prober delivery, median ms | Postfix delivery, median ms | error mean ms | error median ms "
        "| error p95 ms | error min ms | error max ms | within 50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    with running_mail_system() as mail:
        for protocol in ("imap", "pop3"):
            rounds = asyncio.run(run_rounds(mail, protocol, args.rounds))
            delivered_at = wait_for_log(mail.postfix_log, [m.message_id for m in rounds])
            lines.append(report(protocol, rounds, delivered_at))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
