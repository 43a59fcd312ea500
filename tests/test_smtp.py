"""SMTP prober against a real Postfix (AUTH through Dovecot): STARTTLS, implicit TLS, login, and every way it fails."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Iterator

import pytest

from agents.config import ConfigError
from agents.probes.mailproto import MailFailure as Failure
from agents.probes.smtp import probe
from agents.resources import ProbeResources
from agents.results import ProbeResult, ProbeTarget
from tests.support.mailserver import (
    USER,
    MailSystem,
    has_sample,
    mail_module,
    phases,
    running_mail_system,
    sample_value,
)
from tests.support.ports import free_port
from tests.support.tcpservers import LineServer, serving


@pytest.fixture(scope="module")
def mail() -> Iterator[MailSystem]:
    with running_mail_system() as system:
        yield system


async def run(address: str, settings: str = "{}", timeout: str = "5s") -> ProbeResult:
    return await probe(ProbeTarget("smtp", address), mail_module("smtp", settings, timeout), ProbeResources())


def trusted(mail: MailSystem, extra: str = "") -> str:
    return f"{{tls_config: {{ca_file: '{mail.ca.cert}'}}{', ' + extra if extra else ''}}}"


def login(mail: MailSystem, password_file: Path | None = None) -> str:
    return f"auth: {{username: {USER.address}, password_file: '{password_file or mail.password_file(USER)}'}}"


async def test_starttls_and_auth_plain_succeed_and_every_phase_is_timed(mail: MailSystem) -> None:
    result = await run(mail.address("submission"), trusted(mail, login(mail)))
    assert result.success, result.detail
    timed = phases(result, "probe_smtp_duration_seconds")
    assert set(timed) == {"connect", "banner", "ehlo", "starttls", "auth", "quit"}
    assert all(0 < seconds < 5 for seconds in timed.values()), timed
    assert sample_value(result, "probe_smtp_banner_status_code") == 220
    assert sample_value(result, "probe_smtp_starttls_advertised") == 1
    assert sample_value(result, "probe_tls_version_info", version="TLS 1.3") == 1
    assert sample_value(result, "probe_tls_certificate_verified") == 1
    assert sample_value(result, "probe_ssl_leaf_cert_expiry_timestamp_seconds") == mail.certificate.not_after.timestamp()
    assert sample_value(result, "probe_ssl_earliest_cert_expiry") == mail.certificate.not_after.timestamp()


async def test_implicit_tls_and_auth_login_succeed(mail: MailSystem) -> None:
    result = await run(mail.address("smtps"), trusted(mail, f"tls: implicit, auth_mechanism: LOGIN, {login(mail)}"))
    assert result.success, result.detail
    assert set(phases(result, "probe_smtp_duration_seconds")) == {"connect", "tls", "banner", "ehlo", "auth", "quit"}
    assert sample_value(result, "probe_tls_version_info", version="TLS 1.3") == 1
    assert not has_sample(result, "probe_smtp_starttls_advertised")  # nothing to advertise on an implicit TLS port


async def test_wrong_password_fails_with_auth_failed(mail: MailSystem, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    result = await run(mail.address("submission"), trusted(mail, login(mail, wrong)))
    assert result.failure is Failure.AUTH_FAILED
    assert "535" in result.detail
    assert "not-the-password" not in result.detail


async def test_starttls_required_but_not_offered_fails_with_no_starttls(mail: MailSystem) -> None:
    result = await run(mail.address("smtp_no_tls"), trusted(mail))
    assert result.failure is Failure.NO_STARTTLS
    assert sample_value(result, "probe_smtp_starttls_advertised") == 0


async def test_opportunistic_tls_goes_on_in_plain_text_when_starttls_is_not_offered(mail: MailSystem) -> None:
    result = await run(mail.address("smtp_no_tls"), trusted(mail, f"tls: opportunistic, {login(mail)}"))
    assert result.success, result.detail
    assert not has_sample(result, "probe_tls_version_info")
    assert "auth" in phases(result, "probe_smtp_duration_seconds")


async def test_starttls_on_the_last_ehlo_line_counts_as_offered(mail: MailSystem) -> None:
    result = await run(mail.address("smtp_starttls_last"), trusted(mail))
    assert result.success, result.detail
    assert sample_value(result, "probe_smtp_starttls_advertised") == 1


async def test_postscreen_multiline_greeting_is_waited_out_without_talking_early(mail: MailSystem) -> None:
    result = await run(mail.address("postscreen"), trusted(mail))
    assert result.success, result.detail
    assert phases(result, "probe_smtp_duration_seconds")["banner"] >= 1.0  # postscreen_greet_wait before the 220
    log = mail.postfix_log.read_text()
    assert "PASS NEW [127.0.0.1]" in log
    assert "PREGREET" not in log


async def test_tls_below_min_version_fails_with_tls_version(mail: MailSystem) -> None:
    result = await run(mail.address("smtp_tls12"), f"{{tls_config: {{min_version: TLS13, ca_file: '{mail.ca.cert}'}}}}")
    assert result.failure is Failure.TLS_VERSION
    assert sample_value(result, "probe_tls_version_info", version="TLS 1.2") == 1


async def test_tls_at_min_version_succeeds(mail: MailSystem) -> None:
    result = await run(mail.address("smtp_tls12"), f"{{tls_config: {{min_version: TLS12, ca_file: '{mail.ca.cert}'}}}}")
    assert result.success, result.detail


async def test_expired_certificate_fails_verification_and_reports_its_past_expiry(mail: MailSystem) -> None:
    result = await run(mail.address("smtp_expired"), trusted(mail))
    assert result.failure is Failure.TLS_VERIFY
    assert "expired" in result.detail
    expiry = sample_value(result, "probe_ssl_leaf_cert_expiry_timestamp_seconds")
    assert expiry == mail.expired_certificate.not_after.timestamp() < time.time()


async def test_expired_certificate_passes_when_verification_is_off_and_still_shows_the_expiry(mail: MailSystem) -> None:
    result = await run(mail.address("smtp_expired"), "{tls_config: {insecure_skip_verify: true}}")
    assert result.success, result.detail
    assert sample_value(result, "probe_tls_certificate_verified") == 0
    assert sample_value(result, "probe_ssl_earliest_cert_expiry") == mail.expired_certificate.not_after.timestamp()


async def test_untrusted_certificate_after_starttls_still_reports_its_expiry(mail: MailSystem) -> None:
    result = await run(mail.address("submission"))  # the test CA is not in the system store
    assert result.failure is Failure.TLS_VERIFY
    assert sample_value(result, "probe_ssl_earliest_cert_expiry") == mail.certificate.not_after.timestamp()


async def test_banner_matching_the_regexp_succeeds(mail: MailSystem) -> None:
    result = await run(mail.address("smtp"), trusted(mail, r"banner_regexp: '^220 mail\.test\.local ESMTP'"))
    assert result.success, result.detail
    assert sample_value(result, "probe_failed_due_to_regex") == 0


async def test_banner_not_matching_the_regexp_fails_with_bad_banner(mail: MailSystem) -> None:
    result = await run(mail.address("smtp"), trusted(mail, r"banner_regexp: '^220 mx\.other\.example '"))
    assert result.failure is Failure.BAD_BANNER
    assert sample_value(result, "probe_failed_due_to_regex") == 1
    assert "mail.test.local" in result.detail


async def test_required_auth_mechanism_not_offered_fails_with_auth_unsupported(mail: MailSystem) -> None:
    result = await run(mail.address("smtp"), trusted(mail, "require_auth_mechanisms: [PLAIN]"))  # an MX: no AUTH
    assert result.failure is Failure.AUTH_UNSUPPORTED


async def test_offered_auth_mechanisms_pass_the_requirement(mail: MailSystem) -> None:
    result = await run(mail.address("submission"), trusted(mail, "require_auth_mechanisms: [PLAIN, LOGIN]"))
    assert result.success, result.detail


async def test_server_refusing_service_in_its_greeting_fails_with_bad_banner() -> None:
    async with serving(LineServer(banner=["554-mail.example no SMTP service here", "554 try later"])) as address:
        result = await run(address)
    assert result.failure is Failure.BAD_BANNER
    assert sample_value(result, "probe_smtp_banner_status_code") == 554
    assert "554 try later" in result.detail


async def test_server_speaking_another_protocol_fails_with_protocol_error() -> None:
    async with serving(LineServer(banner=["SSH-2.0-OpenSSH_9.2"])) as address:
        result = await run(address)
    assert result.failure is Failure.PROTOCOL_ERROR
    assert "SSH-2.0" in result.detail


async def test_server_down_fails_fast_with_connect_refused() -> None:
    started = time.monotonic()
    result = await run(f"127.0.0.1:{free_port()}")
    assert result.failure is Failure.CONNECT_REFUSED
    assert time.monotonic() - started < 0.5


async def test_server_that_accepts_and_says_nothing_fails_with_timeout_within_the_module_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody ever writes
        started = time.monotonic()
        result = await run(f"127.0.0.1:{silent.getsockname()[1]}", timeout="1s")
    elapsed = time.monotonic() - started
    assert result.failure is Failure.TIMEOUT
    assert 1.0 <= elapsed < 1.5
    assert "connect" in phases(result, "probe_smtp_duration_seconds")


def test_auth_with_both_password_and_password_file_is_rejected_naming_the_key(mail: MailSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "x")
    both = f"{{auth: {{username: u, password: '${{SMTP_PASSWORD}}', password_file: '{mail.password_file(USER)}'}}}}"
    with pytest.raises(ConfigError, match=r"modules\.m\.smtp\.auth: set exactly one of password and password_file"):
        mail_module("smtp", both)


def test_literal_password_is_rejected() -> None:
    with pytest.raises(ConfigError, match="secrets are accepted only by reference"):
        mail_module("smtp", "{auth: {username: u, password: hunter2}}")
