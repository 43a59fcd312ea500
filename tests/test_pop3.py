"""POP3 prober against a real Dovecot: STLS, implicit TLS, USER/PASS, STAT with count and size, and failures."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from agents.config import ConfigError
from agents.probes.mailproto import MailFailure as Failure
from agents.probes.pop3 import probe
from agents.resources import ProbeResources
from agents.results import ProbeResult, ProbeTarget
from tests.support.mailserver import (
    NON_ASCII,
    USER,
    Mailbox,
    MailSystem,
    mail_module,
    phases,
    running_mail_system,
    sample_value,
)
from tests.support.ports import free_port


@pytest.fixture(scope="module")
def mail() -> Iterator[MailSystem]:
    with running_mail_system() as system:
        yield system


async def run(address: str, settings: str = "{}", timeout: str = "5s") -> ProbeResult:
    return await probe(ProbeTarget("pop3", address), mail_module("pop3", settings, timeout), ProbeResources())


def trusted(mail: MailSystem, extra: str = "") -> str:
    return f"{{tls_config: {{ca_file: '{mail.ca.cert}'}}{', ' + extra if extra else ''}}}"


def login(mail: MailSystem, mailbox: Mailbox = USER, password_file: Path | None = None) -> str:
    return f"auth: {{username: {mailbox.address}, password_file: '{password_file or mail.password_file(mailbox)}'}}"


def maildrop_bytes(mail: MailSystem, mailbox: Mailbox) -> int:
    """The maildrop's size as POP3 counts it: every line ends in CRLF (the test messages already do)."""
    maildir = mail.maildir(mailbox)
    return sum(path.stat().st_size for sub in ("new", "cur") for path in (maildir / sub).iterdir())


async def test_stls_login_and_stat_succeed_and_report_count_and_size(mail: MailSystem) -> None:
    for index in range(2):
        mail.put_message(USER, f"message {index}")
    result = await run(mail.address("pop3"), trusted(mail, f"{login(mail)}, stat: true"))
    assert result.success, result.detail
    timed = phases(result, "probe_pop3_duration_seconds")
    assert set(timed) == {"connect", "banner", "capability", "starttls", "auth", "stat", "quit"}
    assert all(0 < seconds < 5 for seconds in timed.values()), timed
    assert sample_value(result, "probe_pop3_mailbox_messages") == 2
    assert sample_value(result, "probe_pop3_mailbox_size_bytes") == maildrop_bytes(mail, USER)
    assert sample_value(result, "probe_pop3_starttls_advertised") == 1
    assert sample_value(result, "probe_tls_version_info", version="TLS 1.3") == 1


async def test_implicit_tls_login_succeeds(mail: MailSystem) -> None:
    result = await run(mail.address("pop3s"), trusted(mail, f"tls: implicit, {login(mail)}"))
    assert result.success, result.detail
    assert set(phases(result, "probe_pop3_duration_seconds")) == {"connect", "tls", "banner", "capability", "auth", "quit"}


async def test_non_ascii_password_logs_in(mail: MailSystem) -> None:
    result = await run(mail.address("pop3"), trusted(mail, login(mail, NON_ASCII)))
    assert result.success, result.detail


async def test_wrong_password_fails_with_auth_failed(mail: MailSystem, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    result = await run(mail.address("pop3"), trusted(mail, login(mail, USER, wrong)))
    assert result.failure is Failure.AUTH_FAILED
    assert result.detail.startswith("PASS answered '-ERR")
    assert "not-the-password" not in result.detail


async def test_stls_required_but_not_offered_fails_with_no_starttls(mail: MailSystem) -> None:
    result = await run(mail.address("pop3", mail.no_tls_host), trusted(mail, login(mail)))
    assert result.failure is Failure.NO_STARTTLS
    assert sample_value(result, "probe_pop3_starttls_advertised") == 0
    assert "auth" not in phases(result, "probe_pop3_duration_seconds")


async def test_opportunistic_tls_logs_in_over_plain_text_when_stls_is_not_offered(mail: MailSystem) -> None:
    result = await run(mail.address("pop3", mail.no_tls_host), f"{{tls: opportunistic, {login(mail)}}}")
    assert result.success, result.detail
    assert result.detail == "no TLS, logged in"


async def test_expired_certificate_fails_verification_and_reports_its_past_expiry(mail: MailSystem) -> None:
    result = await run(mail.address("pop3s", mail.expired_host), trusted(mail, "tls: implicit"))
    assert result.failure is Failure.TLS_VERIFY
    expiry = sample_value(result, "probe_ssl_leaf_cert_expiry_timestamp_seconds")
    assert expiry == mail.expired_certificate.not_after.timestamp() < time.time()


async def test_expired_certificate_after_stls_passes_when_verification_is_off(mail: MailSystem) -> None:
    result = await run(mail.address("pop3", mail.expired_host), f"{{tls_config: {{insecure_skip_verify: true}}, {login(mail)}}}")
    assert result.success, result.detail
    assert sample_value(result, "probe_ssl_earliest_cert_expiry") == mail.expired_certificate.not_after.timestamp()


async def test_untrusted_certificate_after_stls_still_reports_its_expiry(mail: MailSystem) -> None:
    result = await run(mail.address("pop3"))
    assert result.failure is Failure.TLS_VERIFY
    assert sample_value(result, "probe_ssl_earliest_cert_expiry") == mail.certificate.not_after.timestamp()


async def test_server_down_fails_fast_with_connect_refused() -> None:
    started = time.monotonic()
    result = await run(f"127.0.0.1:{free_port()}")
    assert result.failure is Failure.CONNECT_REFUSED
    assert time.monotonic() - started < 0.5


async def test_server_that_accepts_and_says_nothing_fails_with_timeout_within_the_module_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        started = time.monotonic()
        result = await run(f"127.0.0.1:{silent.getsockname()[1]}", timeout="1s")
    assert result.failure is Failure.TIMEOUT
    assert 1.0 <= time.monotonic() - started < 1.5


def test_stat_without_credentials_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"modules\.m\.pop3\.stat: STAT needs auth"):
        mail_module("pop3", "{stat: true}")
