"""IMAP prober against a real Dovecot: STARTTLS, implicit TLS, LOGIN, EXAMINE with its message count, and failures."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from agents.config import ConfigError
from agents.probes.imap import probe
from agents.probes.mailproto import MailFailure as Failure
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
    return await probe(ProbeTarget("imap", address), mail_module("imap", settings, timeout), ProbeResources())


def trusted(mail: MailSystem, extra: str = "") -> str:
    return f"{{tls_config: {{ca_file: '{mail.ca.cert}'}}{', ' + extra if extra else ''}}}"


def login(mail: MailSystem, mailbox: Mailbox = USER, password_file: Path | None = None) -> str:
    return f"auth: {{username: {mailbox.address}, password_file: '{password_file or mail.password_file(mailbox)}'}}"


async def test_starttls_login_and_examine_succeed_and_count_the_messages(mail: MailSystem) -> None:
    for index in range(3):
        mail.put_message(USER, f"message {index}")
    result = await run(mail.address("imap"), trusted(mail, f"{login(mail)}, mailbox: INBOX"))
    assert result.success, result.detail
    timed = phases(result, "probe_imap_duration_seconds")
    assert set(timed) == {"connect", "banner", "capability", "starttls", "auth", "select", "logout"}
    assert all(0 < seconds < 5 for seconds in timed.values()), timed
    assert sample_value(result, "probe_imap_mailbox_messages") == mail.message_count(USER) == 3
    assert sample_value(result, "probe_imap_starttls_advertised") == 1
    assert sample_value(result, "probe_tls_version_info", version="TLS 1.3") == 1
    assert sample_value(result, "probe_ssl_leaf_cert_expiry_timestamp_seconds") == mail.certificate.not_after.timestamp()


async def test_implicit_tls_login_succeeds(mail: MailSystem) -> None:
    result = await run(mail.address("imaps"), trusted(mail, f"tls: implicit, {login(mail)}"))
    assert result.success, result.detail
    assert set(phases(result, "probe_imap_duration_seconds")) == {"connect", "tls", "banner", "capability", "auth", "logout"}


async def test_password_with_space_and_quote_logs_in_as_a_quoted_string(mail: MailSystem) -> None:
    assert " " in USER.password and '"' in USER.password
    result = await run(mail.address("imap"), trusted(mail, login(mail, USER)))
    assert result.success, result.detail


async def test_non_ascii_password_logs_in_as_a_literal(mail: MailSystem) -> None:
    result = await run(mail.address("imap"), trusted(mail, login(mail, NON_ASCII)))
    assert result.success, result.detail


async def test_wrong_password_fails_with_auth_failed(mail: MailSystem, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    result = await run(mail.address("imap"), trusted(mail, login(mail, USER, wrong)))
    assert result.failure is Failure.AUTH_FAILED
    assert "AUTHENTICATIONFAILED" in result.detail


async def test_starttls_required_but_not_offered_fails_with_no_starttls(mail: MailSystem) -> None:
    result = await run(mail.address("imap", mail.no_tls_host), trusted(mail, login(mail)))
    assert result.failure is Failure.NO_STARTTLS
    assert sample_value(result, "probe_imap_starttls_advertised") == 0
    assert "auth" not in phases(result, "probe_imap_duration_seconds")  # no password over plain text


async def test_examining_a_missing_mailbox_fails_with_protocol_error(mail: MailSystem) -> None:
    result = await run(mail.address("imap"), trusted(mail, f"{login(mail)}, mailbox: 'Không có'"))
    assert result.failure is Failure.PROTOCOL_ERROR
    assert "Không có" in result.detail


async def test_expired_certificate_fails_verification_and_reports_its_past_expiry(mail: MailSystem) -> None:
    result = await run(mail.address("imaps", mail.expired_host), trusted(mail, "tls: implicit"))
    assert result.failure is Failure.TLS_VERIFY
    assert "expired" in result.detail
    expiry = sample_value(result, "probe_ssl_leaf_cert_expiry_timestamp_seconds")
    assert expiry == mail.expired_certificate.not_after.timestamp() < time.time()


async def test_expired_certificate_passes_when_verification_is_off(mail: MailSystem) -> None:
    result = await run(mail.address("imap", mail.expired_host), f"{{tls_config: {{insecure_skip_verify: true}}, {login(mail)}}}")
    assert result.success, result.detail
    assert sample_value(result, "probe_ssl_earliest_cert_expiry") == mail.expired_certificate.not_after.timestamp()


async def test_untrusted_certificate_after_starttls_still_reports_its_expiry(mail: MailSystem) -> None:
    result = await run(mail.address("imap"))
    assert result.failure is Failure.TLS_VERIFY
    assert sample_value(result, "probe_ssl_earliest_cert_expiry") == mail.certificate.not_after.timestamp()


async def test_greeting_not_matching_the_regexp_fails_with_bad_banner(mail: MailSystem) -> None:
    result = await run(mail.address("imap"), trusted(mail, "banner_regexp: 'Exchange'"))
    assert result.failure is Failure.BAD_BANNER
    assert "Dovecot" in result.detail


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


def test_mailbox_without_credentials_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"modules\.m\.imap\.mailbox: examining a mailbox needs auth"):
        mail_module("imap", "{mailbox: INBOX}")
