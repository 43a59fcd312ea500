"""mail_roundtrip against real Postfix + Dovecot: delivery measured and cleaned up, late and lost counted when
Postfix holds mail back (defer_transports), and no credential in any output the agent produces."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from agents.config import ConfigError
from agents.probes.mail_roundtrip import RoundtripFailure as Failure
from agents.probes.mail_roundtrip import probe
from agents.resources import ProbeResources
from agents.results import ProbeResult, ProbeTarget
from tests.support.mailserver import (
    PROBE,
    USER,
    MailSystem,
    mail_module,
    running_mail_system,
    sample_value,
)
from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
LOST_AFTER = 3.0  # seconds, with delivery held back: short, so a test can wait it out


@pytest.fixture(scope="module")
def mail() -> Iterator[MailSystem]:
    with running_mail_system() as system:
        yield system


@pytest.fixture(scope="module")
def blocked_mail() -> Iterator[MailSystem]:
    """Postfix accepts and queues, but delivers only when the test flushes the queue."""
    with running_mail_system(defer_delivery=True) as system:
        yield system


def roundtrip_settings(
    mail: MailSystem,
    protocol: str = "imap",
    smtp_password: Path | None = None,
    mailbox_password: Path | None = None,
    lost_after: str = "15m",
) -> str:
    ca = f"tls_config: {{ca_file: '{mail.ca.cert}'}}"
    smtp_auth = f"{{username: {PROBE.address}, password_file: '{smtp_password or mail.password_file(PROBE)}'}}"
    mailbox_auth = f"{{username: {PROBE.address}, password_file: '{mailbox_password or mail.password_file(PROBE)}'}}"
    return (
        f"{{mail_from: {PROBE.address}, rcpt_to: {PROBE.address}, lost_after: {lost_after},"
        f" smtp: {{port: {mail.ports['submission']}, {ca}, auth: {smtp_auth}}},"
        f" mailbox: {{protocol: {protocol}, port: {mail.ports[protocol]}, {ca}, auth: {mailbox_auth}}}}}"
    )


async def roundtrip(settings: str, resources: ProbeResources, timeout: str = "10s") -> ProbeResult:
    module = mail_module("mail_roundtrip", settings, timeout)
    return await probe(ProbeTarget("roundtrip", "127.0.0.1"), module, resources)


async def blocked_roundtrip(mail: MailSystem, resources: ProbeResources) -> ProbeResult:
    """A run that waits 2 s for a message Postfix holds back."""
    return await roundtrip(roundtrip_settings(mail, lost_after=f"{LOST_AFTER:g}s"), resources, timeout="2s")


def wait_for_count(mail: MailSystem, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while mail.message_count(PROBE) != count:
        assert time.monotonic() < deadline, f"{mail.message_count(PROBE)} messages, expected {count}"
        time.sleep(0.05)


def wait_for_empty_queue(mail: MailSystem, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while mail.queue_size():
        assert time.monotonic() < deadline, f"{mail.queue_size()} messages still queued"
        time.sleep(0.05)


def total(results: list[ProbeResult], name: str) -> float:
    return sum(sample_value(result, name) for result in results)


# --- delivery ---------------------------------------------------------------------------------------------------


async def test_imap_roundtrip_reports_send_and_delivery_and_leaves_nothing_behind(mail: MailSystem) -> None:
    before = mail.message_count(PROBE)
    result = await roundtrip(roundtrip_settings(mail), ProbeResources())
    assert result.success, result.detail
    assert sample_value(result, "probe_mail_roundtrip_send_success") == 1
    assert sample_value(result, "probe_mail_roundtrip_delivery_success") == 1
    delivery = sample_value(result, "probe_mail_roundtrip_last_delivery_duration_seconds")
    (observed,) = next(s.observations for s in result.samples if s.metric.name == "probe_mail_roundtrip_delivery_duration_seconds")
    assert observed == delivery and 0 < delivery < 10
    assert 0 < sample_value(result, "probe_mail_roundtrip_send_duration_seconds") < 10
    assert time.time() - sample_value(result, "probe_mail_roundtrip_last_success_timestamp_seconds") < 10
    message_id = result.detail.split()[0]
    assert f"message-id={message_id}" in mail.postfix_log.read_text()  # really through Postfix, with its Message-ID
    assert mail.message_count(PROBE) == before


def test_run_mode_logs_each_runs_message_id_and_queue_id_at_info(mail: MailSystem, tmp_path: Path) -> None:
    """Operators find the run's message in the mail server's log by its Message-ID (Postfix: by its queue id)."""
    port = free_port()
    config = tmp_path / "agent.yml"
    config.write_text(
        f"agent: {{id: roundtrip-log, agency: so-test}}\nlisten: 127.0.0.1:{port}\n"
        f"modules:\n  roundtrip: {{prober: mail_roundtrip, timeout: 5s, mail_roundtrip: {roundtrip_settings(mail)}}}\n"
        "targets:\n  - {name: mail-rt, address: 127.0.0.1, module: roundtrip, interval: 10s}\n",
        encoding="utf-8",
    )
    log = tmp_path / "agent.log"
    argv = [sys.executable, "-m", "agents.cli", "run", "--config", str(config)]  # the default log level: info
    with running(argv, log_path=str(log), cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        line = _wait_for_line(log, " INFO agents.probes.mail_roundtrip: mail_roundtrip mail-rt: <netmon-roundtrip.")
    message_id = re.search(r"<netmon-roundtrip\.[^>]+>", line).group(0)
    queue_id = re.search(r"queued as (\w+)", line).group(1)
    postfix_log = mail.postfix_log.read_text()
    assert f"{queue_id}: message-id={message_id}" in postfix_log, line
    _remove_if_left(mail, queue_id, message_id)  # the agent may be stopped mid-run: the next tests need a clean mailbox


def _remove_if_left(mail: MailSystem, queue_id: str, message_id: str, timeout: float = 10.0) -> None:
    """Once Postfix has delivered the run's message, delete it if the stopped agent did not."""
    deadline = time.monotonic() + timeout
    while f"{queue_id}: " not in "".join(line for line in mail.postfix_log.read_text().splitlines(True) if "status=sent" in line):
        assert time.monotonic() < deadline, f"Postfix never delivered {queue_id}"
        time.sleep(0.1)
    maildir = mail.maildir(PROBE)
    for path in [path for sub in ("new", "cur") for path in (maildir / sub).iterdir()]:
        with contextlib.suppress(FileNotFoundError):  # the agent's own clean-up may win the race
            if message_id in path.read_text(errors="replace"):
                path.unlink()


def _wait_for_line(log: Path, wanted: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in log.read_text(encoding="utf-8").splitlines() if wanted in line]
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no log line with {wanted!r}:\n{log.read_text(encoding='utf-8')}")


async def test_twenty_rounds_bring_the_mailbox_back_to_its_start_and_keep_other_mail(mail: MailSystem) -> None:
    mail.put_message(PROBE, "a message somebody else sent")
    mail.put_message(PROBE, "another one")
    before = mail.message_count(PROBE)
    resources = ProbeResources()
    results = [await roundtrip(roundtrip_settings(mail), resources) for _ in range(20)]
    assert [r.failure for r in results] == [None] * 20, [r.detail for r in results if not r.success]
    assert total(results, "probe_mail_roundtrip_messages_delivered_total") == 20
    assert total(results, "probe_mail_roundtrip_messages_sent_total") == 20
    assert mail.message_count(PROBE) == before == 2


async def test_pop3_roundtrip_delivers_and_cleans_up(mail: MailSystem) -> None:
    before = mail.message_count(PROBE)
    result = await roundtrip(roundtrip_settings(mail, "pop3"), ProbeResources())
    assert result.success, result.detail
    assert 0 < sample_value(result, "probe_mail_roundtrip_last_delivery_duration_seconds") < 10
    assert mail.message_count(PROBE) == before


async def test_rejected_smtp_login_fails_the_send_and_sends_nothing(mail: MailSystem, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    result = await roundtrip(roundtrip_settings(mail, smtp_password=wrong), ProbeResources())
    assert result.failure is Failure.AUTH_FAILED
    assert result.detail.startswith("smtp: ")
    assert sample_value(result, "probe_mail_roundtrip_send_success") == 0
    assert sample_value(result, "probe_mail_roundtrip_delivery_success") == 0
    assert sample_value(result, "probe_mail_roundtrip_pending_messages") == 0


async def test_message_sent_while_the_mailbox_is_unreadable_stays_pending_then_counts_late(mail: MailSystem, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    resources = ProbeResources()
    blind = await roundtrip(roundtrip_settings(mail, mailbox_password=wrong), resources)
    assert blind.failure is Failure.AUTH_FAILED
    assert blind.detail.startswith("mailbox: ")
    assert sample_value(blind, "probe_mail_roundtrip_send_success") == 1
    assert sample_value(blind, "probe_mail_roundtrip_pending_messages") == 1
    seeing = await roundtrip(roundtrip_settings(mail), resources)
    assert seeing.success, seeing.detail
    assert sample_value(seeing, "probe_mail_roundtrip_messages_late_total") == 1
    assert sample_value(seeing, "probe_mail_roundtrip_pending_messages") == 0


# --- delivery held back -----------------------------------------------------------------------------------------


async def test_message_arriving_after_its_timeout_is_counted_late_not_lost_and_deleted(blocked_mail: MailSystem) -> None:
    resources = ProbeResources()
    first = await blocked_roundtrip(blocked_mail, resources)
    assert first.failure is Failure.NOT_DELIVERED
    assert sample_value(first, "probe_mail_roundtrip_send_success") == 1
    assert sample_value(first, "probe_mail_roundtrip_pending_messages") == 1
    blocked_mail.flush_queue()
    wait_for_count(blocked_mail, 1)
    second = await blocked_roundtrip(blocked_mail, resources)
    assert second.failure is Failure.NOT_DELIVERED  # its own message is held back in turn
    assert sample_value(second, "probe_mail_roundtrip_messages_late_total") == 1
    assert sample_value(second, "probe_mail_roundtrip_messages_lost_total") == 0
    assert blocked_mail.message_count(PROBE) == 0


async def test_message_missing_longer_than_lost_after_is_counted_lost(blocked_mail: MailSystem) -> None:
    resources = ProbeResources()
    first = await blocked_roundtrip(blocked_mail, resources)
    assert first.failure is Failure.NOT_DELIVERED
    time.sleep(LOST_AFTER)
    second = await blocked_roundtrip(blocked_mail, resources)
    assert sample_value(second, "probe_mail_roundtrip_messages_lost_total") == 1
    assert sample_value(second, "probe_mail_roundtrip_messages_late_total") == 0
    assert sample_value(second, "probe_mail_roundtrip_pending_messages") == 1  # the second run's own message


async def test_leftover_from_before_a_restart_is_deleted_once_older_than_lost_after(blocked_mail: MailSystem) -> None:
    await blocked_roundtrip(blocked_mail, ProbeResources())  # then the agent restarts
    blocked_mail.flush_queue()
    wait_for_empty_queue(blocked_mail)
    assert blocked_mail.message_count(PROBE) >= 1
    time.sleep(LOST_AFTER)
    after_restart = await blocked_roundtrip(blocked_mail, ProbeResources())
    assert after_restart.failure is Failure.NOT_DELIVERED  # its own message is held back
    assert sample_value(after_restart, "probe_mail_roundtrip_messages_late_total") == 0
    assert blocked_mail.message_count(PROBE) == 0


# --- config -----------------------------------------------------------------------------------------------------


def test_lost_after_not_longer_than_the_timeout_is_rejected(mail: MailSystem) -> None:
    settings = roundtrip_settings(mail, lost_after="5s")
    with pytest.raises(ConfigError, match=r"lost_after: must be longer than the module timeout \(10s\)"):
        mail_module("mail_roundtrip", settings, "10s")


def test_mailbox_without_credentials_is_rejected() -> None:
    settings = "{mail_from: a@b.c, rcpt_to: a@b.c, mailbox: {protocol: imap}}"
    with pytest.raises(ConfigError, match=r"mailbox\.auth: the probe mailbox needs credentials"):
        mail_module("mail_roundtrip", settings)


def test_mail_example_config_passes_check_config_with_its_password_in_the_environment() -> None:
    argv = [sys.executable, "-m", "agents.cli", "check-config", "config/examples/mail.yml"]
    env = {**os.environ, "MAIL_PROBE_PASSWORD": "example-only"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert "OK (9 modules, 9 targets)" in done.stdout


# --- secrets ----------------------------------------------------------------------------------------------------

SECRET_ENV = {"NETMON_SMTP_PW": PROBE.password, "NETMON_IMAP_PW": USER.password, "NETMON_WRONG_PW": "wr0ng-Secret!"}


def secret_config(mail: MailSystem, path: Path, listen_port: int) -> Path:
    ca = f"tls_config: {{ca_file: '{mail.ca.cert}'}}"
    path.write_text(
        f"""\
agent: {{id: secrets, agency: so-test}}
listen: 127.0.0.1:{listen_port}
defaults: {{interval: 1s, timeout: 900ms}}
modules:
  smtp_wrong:
    prober: smtp
    smtp: {{{ca}, auth: {{username: {PROBE.address}, password: '${{NETMON_WRONG_PW}}'}}}}
  imap_ok:
    prober: imap
    imap: {{{ca}, auth: {{username: {USER.address}, password: '${{NETMON_IMAP_PW}}'}}, mailbox: INBOX}}
  pop3_wrong:
    prober: pop3
    pop3: {{{ca}, auth: {{username: {USER.address}, password: '${{NETMON_WRONG_PW}}'}}}}
  roundtrip:
    prober: mail_roundtrip
    mail_roundtrip:
      mail_from: {PROBE.address}
      rcpt_to: {PROBE.address}
      smtp: {{port: {mail.ports['submission']}, {ca}, auth: {{username: {PROBE.address}, password: '${{NETMON_SMTP_PW}}'}}}}
      mailbox: {{protocol: imap, port: {mail.ports['imap']}, {ca}, auth: {{username: {PROBE.address}, password: '${{NETMON_WRONG_PW}}'}}}}
targets:
  - {{name: smtp-wrong, address: "{mail.address('submission')}", module: smtp_wrong}}
  - {{name: imap-ok, address: "{mail.address('imap')}", module: imap_ok}}
  - {{name: pop3-wrong, address: "{mail.address('pop3')}", module: pop3_wrong}}
  - {{name: roundtrip, address: "127.0.0.1", module: roundtrip}}
""",
        encoding="utf-8",
    )
    return path


def assert_no_secret(text: str) -> None:
    for name, secret in SECRET_ENV.items():
        assert secret not in text, f"the value of {name} leaked"


def test_no_password_in_probe_once_output_table_or_json(mail: MailSystem, tmp_path: Path) -> None:
    config = secret_config(mail, tmp_path / "agent.yml", free_port())
    for extra in ([], ["--json"]):
        argv = [sys.executable, "-m", "agents.cli", "--log-level", "debug", "probe", "--config", str(config), "--once", *extra]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **SECRET_ENV})
        assert done.returncode == 1, done.stderr  # the wrong passwords fail their probes
        assert "auth_failed" in done.stdout
        assert_no_secret(done.stdout + done.stderr)
        if extra:
            assert {r["target"]: r["success"] for r in json.loads(done.stdout)["results"]}["imap-ok"] is True


def test_no_password_in_the_running_agents_metrics_or_logs(mail: MailSystem, tmp_path: Path) -> None:
    port = free_port()
    config = secret_config(mail, tmp_path / "agent.yml", port)
    log = tmp_path / "agent.log"
    argv = [sys.executable, "-m", "agents.cli", "--log-level", "debug", "run", "--config", str(config)]
    with running(argv, log_path=str(log), env=SECRET_ENV, cwd=str(ROOT)) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)
        metrics = _metrics_after_failures(port)
    assert 'reason="auth_failed"' in metrics
    assert_no_secret(metrics)
    assert_no_secret(log.read_text(encoding="utf-8"))


def _metrics_after_failures(port: int, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode("utf-8")
        if text.count('reason="auth_failed"') >= 3 or time.monotonic() > deadline:
            return text
        time.sleep(0.3)
