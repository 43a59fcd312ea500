"""The Vietnamese alert e-mail end to end: the example Alertmanager config and its template
(config/alertmanager/netmon-email.tmpl), a real Alertmanager sending through the test suite's real Postfix, and the
message read back over IMAP from Dovecot. The alert posted is NetmonAgencyOffline exactly as Prometheus renders it:
labels and annotations are the expectation of its promtool unit test."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import imaplib
import json
import urllib.request
from email.message import EmailMessage
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.support.mailserver import PROBE, USER, Mailbox, MailSystem, running_mail_system
from tests.test_collector import wait_until
from tests.test_rules import RULES_DIR, example_alertmanager_config, running_alertmanager

AGENCY_NAME = "Ủy ban nhân dân xã Hậu Mỹ Bắc A"
SUBJECT = f"{AGENCY_NAME} — Cơ quan mất kết nối: {AGENCY_NAME}"
VIETNAM = dt.timezone(dt.timedelta(hours=7))


@pytest.fixture(scope="module")
def mail() -> Iterator[MailSystem]:
    with running_mail_system() as system:
        yield system


def offline_alert() -> tuple[dict[str, str], dict[str, str]]:
    """Labels and annotations of NetmonAgencyOffline as its promtool unit test expects Prometheus to render them."""
    tests = yaml.safe_load((RULES_DIR / "tests" / "agency_test.yml").read_text(encoding="utf-8"))["tests"]
    [expected] = [
        alert
        for test in tests
        for case in test["alert_rule_test"]
        if case["alertname"] == "NetmonAgencyOffline"
        for alert in case["exp_alerts"]
    ]
    labels = {"alertname": "NetmonAgencyOffline", **expected["exp_labels"]}
    assert labels["name"] == AGENCY_NAME and labels["district"] == "cai-be" and labels["severity"] == "critical"
    return labels, expected["exp_annotations"]


def mail_config(mail: MailSystem, mailbox: Mailbox) -> str:
    """The example config, sending through the test Postfix to one test mailbox, without waiting to group."""
    config = example_alertmanager_config()
    config["global"]["smtp_smarthost"] = mail.address("smtp")
    for route in [config["route"], *config["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s")
    for receiver in config["receivers"]:
        receiver.pop("webhook_configs", None)  # the chat relay is tested in test_rules.py
        for email_config in receiver.get("email_configs", []):
            email_config["to"] = mailbox.address
    return yaml.safe_dump(config, allow_unicode=True)


def post_alert(alertmanager: str, labels: dict, annotations: dict, starts: dt.datetime, ends: dt.datetime | None = None) -> None:
    alert = {"labels": labels, "annotations": annotations, "startsAt": starts.isoformat()}
    if ends is not None:
        alert["endsAt"] = ends.isoformat()
    request = urllib.request.Request(
        f"http://{alertmanager}/api/v2/alerts", data=json.dumps([alert]).encode("utf-8"),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def messages(mail: MailSystem, mailbox: Mailbox) -> list[tuple[bytes, EmailMessage]]:
    """Every message in the mailbox's INBOX over IMAP: (the raw header block, the parsed message)."""
    with imaplib.IMAP4("127.0.0.1", mail.ports["imap"], timeout=10) as imap:
        imap.login(mailbox.address, mailbox.password)
        imap.select("INBOX", readonly=True)
        _, [numbers] = imap.search(None, "ALL")
        found = []
        for number in numbers.split():
            _, data = imap.fetch(number, "(RFC822)")
            raw = data[0][1]
            found.append((raw.split(b"\r\n\r\n", 1)[0], email.message_from_bytes(raw, policy=email.policy.default)))
        return found


def wait_for_messages(mail: MailSystem, mailbox: Mailbox, count: int) -> list[tuple[bytes, EmailMessage]]:
    wait_until(lambda: len(messages(mail, mailbox)) >= count, 30, f"{count} message(s) in {mailbox.address}", step=0.5)
    return messages(mail, mailbox)


def text_and_html(message: EmailMessage) -> tuple[str, str]:
    """The decoded text and HTML parts, with the lines ended by \n."""
    parts = (message.get_body(("plain",)), message.get_body(("html",)))
    return tuple(part.get_content().replace("\r\n", "\n") for part in parts)  # type: ignore[return-value]


def test_a_firing_alert_arrives_as_a_vietnamese_email_naming_the_agency_and_what_failed(mail, tmp_path: Path) -> None:
    labels, annotations = offline_alert()
    starts = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    with running_alertmanager(tmp_path / "alertmanager", mail_config(mail, PROBE)) as alertmanager:
        post_alert(alertmanager, labels, annotations, starts)
        # critical: the on-call e-mail, and (continue: true) the district's team
        received = wait_for_messages(mail, PROBE, 2)
    assert len(received) == 2
    for raw_header, message in received:
        assert message["Subject"] == f"[NGHIÊM TRỌNG] {SUBJECT}"
        assert raw_header.isascii() and b"\nsubject: =?utf-8?" in raw_header.lower()  # RFC 2047 encoded on the wire
        text, html = text_and_html(message)
        for body in (text, html):
            assert annotations["summary"] in body and annotations["description"] in body
            assert annotations["runbook_url"] in body and annotations["summary_en"] in body
        assert f"  Cơ quan: {AGENCY_NAME} (xa-hau-my-bac-a)\n  Huyện: cai-be\n" in text
        assert f"  Bắt đầu: {starts.astimezone(VIETNAM):%H:%M %d/%m/%Y} (giờ Việt Nam)\n" in text
        assert f'<a href="{annotations["runbook_url"]}">' in html and f"<b>{AGENCY_NAME}</b>" in html
        assert message.get_body(("plain",)).get_content_charset() == "utf-8"


def test_a_resolved_alert_arrives_as_resolved(mail, tmp_path: Path) -> None:
    labels, annotations = offline_alert()
    starts = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(minutes=3)
    with running_alertmanager(tmp_path / "alertmanager", mail_config(mail, USER)) as alertmanager:
        post_alert(alertmanager, labels, annotations, starts)
        wait_for_messages(mail, USER, 2)
        post_alert(alertmanager, labels, annotations, starts, ends=dt.datetime.now(dt.timezone.utc))
        received = wait_for_messages(mail, USER, 3)  # only the on-call e-mail has send_resolved
    subjects = sorted(message["Subject"] for _, message in received)
    assert subjects == [f"[NGHIÊM TRỌNG] {SUBJECT}"] * 2 + [f"[ĐÃ KHẮC PHỤC] {SUBJECT}"]
    [resolved] = [message for _, message in received if message["Subject"].startswith("[ĐÃ KHẮC PHỤC]")]
    text, _ = text_and_html(resolved)
    assert "ĐÃ KHẮC PHỤC (1)" in text and "  Kết thúc: " in text and AGENCY_NAME in text
