"""Generate the Prometheus alert and recording rules of config/prometheus/rules/*.yml.

    python config/prometheus/generate.py [--runbook-base URL] [OUT_DIR]    # default: rules/ beside this file

Every rule is defined once, here. The YAML files are written from these definitions and committed for the default
runbook base; tests/test_rules.py fails when they differ from this script's output. Every alert carries:

    summary, description            Vietnamese, for the on-call staff (the Alertmanager e-mail template shows them)
    summary_en, description_en      the same in English
    runbook_url                     RUNBOOK_BASE#<alert name in lower case>: its section of docs/runbooks.md

Prometheus reads no variable when it evaluates a rule, so the base URL is a parameter of this script: publish
docs/runbooks.md where the on-call staff can open it from a phone (the IT center's GitLab renders it with these
anchors) and deploy the rules written with that URL. Series carry `agency`, `agent`, `district`, `level` (added by
the collector); the Vietnamese name of an agency comes from `netmon_agency_info`, joined on `agency`.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_RUNBOOK_BASE = "https://git.stttt.tiengiang.gov.vn/netmon/egov-netmon/-/blob/main/docs/runbooks.md"
WIDTH = 120
AGENCY_NAME = "* on (agency) group_left (name) netmon_agency_info"
MAIL_TARGETS = (
    "and on (agency, agent, target, module)\n"
    "(probe_smtp_duration_seconds or probe_imap_duration_seconds or probe_pop3_duration_seconds)"
)


@dataclass(frozen=True)
class Text:
    """One annotation in Vietnamese and in English; runs of white space become one space."""

    vi: str
    en: str


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str  # warning | critical
    scope: str  # agency | agent | target | collector: used by Alertmanager's inhibition
    summary: Text
    description: Text


@dataclass(frozen=True)
class Record:
    name: str
    expr: str


@dataclass(frozen=True)
class Group:
    name: str
    rules: list[Alert | Record]
    interval: str = ""
    comment: str = ""


@dataclass(frozen=True)
class RuleFile:
    comment: str
    groups: list[Group]


def named(expr: str) -> str:
    """An expression joined with netmon_agency_info, so its alert carries the agency's Vietnamese name."""
    inner = textwrap.dedent(expr).strip()
    if "\n" not in inner:
        return f"({inner})\n{AGENCY_NAME}"
    return f"(\n{textwrap.indent(inner, '  ')}\n)\n{AGENCY_NAME}"


# --- the rules -----------------------------------------------------------------------------------------------------

AGENCY = RuleFile(
    "Agencies and their agents: liveness comes from the collector (netmon_agent_up, DESIGN decision 7).\n"
    "Human names come from netmon_agency_info{agency,name,district,level}, joined on `agency` (DESIGN decision 6).",
    [Group("netmon-agency", [
        Record("agency:netmon_agent_up:max", "max by (agency, district, level) (netmon_agent_up)"),
        Alert(
            "NetmonAgencyOffline", named("agency:netmon_agent_up:max == 0"), "2m", "critical", "agency",
            Text("Cơ quan mất kết nối: {{ $labels.name }}", "Agency offline: {{ $labels.name }}"),
            Text(
                """Không agent nào của {{ $labels.name }} ({{ $labels.agency }}, huyện {{ $labels.district }}) gửi
                dữ liệu hoặc được bộ thu thập lấy dữ liệu trong hơn 2 phút: đường truyền số liệu chuyên dùng (TSLCD),
                nguồn điện hoặc máy chạy agent của cơ quan đang có sự cố.""",
                """No agent of {{ $labels.name }} ({{ $labels.agency }}, district {{ $labels.district }}) has pushed
                to or been scraped by the collector for more than 2 minutes: the agency's link to the data network
                (TSLCD), its power, or its agent host is down.""",
            ),
        ),
        Alert(
            "NetmonAgentDown",
            named("(netmon_agent_up == 0)\nunless on (agency) (agency:netmon_agent_up:max == 0)"), "2m", "warning", "agent",
            Text("Agent {{ $labels.agent }} của {{ $labels.name }} không báo cáo",
                 "Agent {{ $labels.agent }} of {{ $labels.name }} is silent"),
            Text(
                """Agent {{ $labels.agent }} của {{ $labels.name }} ({{ $labels.agency }}, huyện
                {{ $labels.district }}) không gửi dữ liệu trong hơn 2 phút, trong khi agent khác của cơ quan vẫn
                hoạt động.""",
                """Agent {{ $labels.agent }} of {{ $labels.name }} ({{ $labels.agency }}, district
                {{ $labels.district }}) has not reported for more than 2 minutes while another agent of the agency
                still does.""",
            ),
        ),
        Alert(
            "NetmonAgentProbesOverrunning",
            named("sum by (agency, agent, district, level, target, module) "
                  "(increase(netmon_agent_probe_overruns_total[10m])) > 0"),
            "10m", "warning", "agent",
            Text("Phép đo {{ $labels.target }} chạy quá chu kỳ ({{ $labels.name }})",
                 "Probes of {{ $labels.target }} overrun their interval ({{ $labels.name }})"),
            Text(
                """Agent {{ $labels.agent }} của {{ $labels.name }} ({{ $labels.agency }}) đã bỏ qua
                {{ $value | printf "%.0f" }} lần đo {{ $labels.target }} (module {{ $labels.module }}) trong 10 phút
                qua vì lần đo trước chưa xong: thời gian chờ (timeout) quá sát chu kỳ đo, hoặc máy chạy agent bị quá
                tải.""",
                """Agent {{ $labels.agent }} of {{ $labels.name }} ({{ $labels.agency }}) skipped
                {{ $value | printf "%.0f" }} runs of target {{ $labels.target }} (module {{ $labels.module }}) in the
                last 10 minutes because the previous run was still going: its timeout is too close to its interval,
                or the agent host is overloaded.""",
            ),
        ),
    ])],
)

NETWORK = RuleFile(
    "The dedicated data network (TSLCD) between agencies and the provincial data center, from the icmp prober;\n"
    "where a degraded path breaks, from the path prober (probe_path_fault_hop: the TTL, label hop_address).",
    [Group("netmon-network", [
        Record("target:probe_icmp_packet_loss:ratio_rate5m", """
            1 - (
              sum by (agency, agent, district, level, target, module) (rate(probe_icmp_packets_received_total[5m]))
              /
              sum by (agency, agent, district, level, target, module) (rate(probe_icmp_packets_sent_total[5m]))
            )"""),
        Record("target:probe_icmp_rtt_seconds:p90_rate5m", """
            histogram_quantile(0.9,
              sum by (agency, agent, district, level, target, module, le) (rate(probe_icmp_rtt_seconds_bucket[5m]))
            )"""),
        Alert(
            "NetmonLinkPacketLoss", named("target:probe_icmp_packet_loss:ratio_rate5m > 0.05"), "10m", "warning", "target",
            Text("Mất gói {{ $value | humanizePercentage }} tới {{ $labels.target }} ({{ $labels.name }})",
                 "Packet loss {{ $value | humanizePercentage }} to {{ $labels.target }} ({{ $labels.name }})"),
            Text(
                """{{ $labels.name }} ({{ $labels.agency }}, huyện {{ $labels.district }}): hơn 5% gói ICMP echo từ
                agent {{ $labels.agent }} tới {{ $labels.target }} qua mạng truyền số liệu chuyên dùng (TSLCD) không
                được trả lời trong 10 phút; hiện tại {{ $value | humanizePercentage }}.""",
                """{{ $labels.name }} ({{ $labels.agency }}, district {{ $labels.district }}): more than 5% of ICMP
                echo requests from agent {{ $labels.agent }} to {{ $labels.target }} got no reply over the data
                network (TSLCD) for 10 minutes; now {{ $value | humanizePercentage }}.""",
            ),
        ),
        Alert(
            "NetmonLinkHighLatency", named("target:probe_icmp_rtt_seconds:p90_rate5m > 0.1"), "10m", "warning", "target",
            Text("Độ trễ p90 {{ $value | humanizeDuration }} tới {{ $labels.target }} ({{ $labels.name }})",
                 "RTT p90 {{ $value | humanizeDuration }} to {{ $labels.target }} ({{ $labels.name }})"),
            Text(
                """{{ $labels.name }} ({{ $labels.agency }}, huyện {{ $labels.district }}): phân vị 90 của thời gian
                khứ hồi (RTT) từ agent {{ $labels.agent }} tới {{ $labels.target }} qua mạng TSLCD trên 100 ms trong
                10 phút; hiện tại {{ $value | humanizeDuration }}.""",
                """{{ $labels.name }} ({{ $labels.agency }}, district {{ $labels.district }}): the 90th percentile
                round-trip time from agent {{ $labels.agent }} to {{ $labels.target }} over the data network (TSLCD)
                has been above 100 ms for 10 minutes; now {{ $value | humanizeDuration }}.""",
            ),
        ),
        Alert(
            "NetmonPathDegraded", named("probe_path_fault_hop > 0"), "5m", "warning", "target",
            Text(
                """Đường tới {{ $labels.target }} mất gói từ chặng {{ $value }}
                ({{ or $labels.hop_address "không trả lời" }}) — {{ $labels.name }}""",
                """Path to {{ $labels.target }} loses from hop {{ $value }}
                ({{ or $labels.hop_address "no answer" }}) — {{ $labels.name }}""",
            ),
            Text(
                """{{ $labels.name }} ({{ $labels.agency }}, huyện {{ $labels.district }}): các lần dò đường gần nhất
                của agent {{ $labels.agent }} tới {{ $labels.target }} trong 5 phút cho thấy mất gói bắt đầu từ chặng
                {{ $value }} (địa chỉ {{ or $labels.hop_address "không trả lời" }}) và kéo dài tới đích. Hãy báo cho
                đơn vị quản lý chặng này: router của xã, của huyện, mạng lõi của nhà mạng hay biên trung tâm dữ liệu.
                Mất gói chỉ ở một chặng giữa mà các chặng sau không có là router đó hạn chế trả lời ICMP, không phải
                sự cố.""",
                """{{ $labels.name }} ({{ $labels.agency }}, district {{ $labels.district }}): for 5 minutes the latest
                path traces from agent {{ $labels.agent }} to {{ $labels.target }} show loss that starts at hop
                {{ $value }} (address {{ or $labels.hop_address "no answer" }}) and persists to the destination.
                Call whoever runs that hop: the commune's router, the district's, the carrier's core or the data
                center's edge. Loss at an intermediate hop that the later hops do not show is that router
                rate-limiting its ICMP replies, not a fault.""",
            ),
        ),
    ])],
)


def certificate_expiring(days: int, severity: str, vi_tail: str, en_tail: str) -> Alert:
    return Alert(
        "NetmonCertificateExpiring", named(f"(probe_ssl_earliest_cert_expiry - time()) / 86400 < {days}"), "10m",
        severity, "target",
        Text('Chứng thư số của {{ $labels.target }} hết hạn sau {{ $value | printf "%.0f" }} ngày',
             'Certificate of {{ $labels.target }} expires in {{ $value | printf "%.0f" }} days'),
        Text(
            """Chứng thư số TLS của {{ $labels.target }} (agent {{ $labels.agent }} của {{ $labels.name }},
            {{ $labels.agency }} ghi nhận) hết hạn sau {{ $value | printf "%.1f" }} ngày """ + vi_tail,
            """The TLS certificate served by {{ $labels.target }} (seen by agent {{ $labels.agent }} of
            {{ $labels.name }}, {{ $labels.agency }}) expires in {{ $value | printf "%.1f" }} days """ + en_tail,
        ),
    )


MAIL = RuleFile(
    "The provincial mail system: roundtrip (send through SMTP, find it over IMAP/POP3) and the SMTP/IMAP/POP3 probers.\n"
    "Mail targets are recognised by the phase series only their probers emit, so module names stay free.",
    [
        Group("netmon-mail", [
            Alert(
                "NetmonMailRoundtripFailing", named("probe_mail_roundtrip_delivery_success == 0"), "5m", "critical", "target",
                Text("Thư kiểm tra qua {{ $labels.target }} không đến nơi ({{ $labels.name }})",
                     "Mail roundtrip failing via {{ $labels.target }} ({{ $labels.name }})"),
                Text(
                    """Đã 5 phút agent {{ $labels.agent }} của {{ $labels.name }} ({{ $labels.agency }}) không gửi
                    được thư kiểm tra qua {{ $labels.target }} hoặc không thấy thư trong hộp thư kiểm tra trong thời
                    gian chờ.""",
                    """Agent {{ $labels.agent }} of {{ $labels.name }} ({{ $labels.agency }}) has not been able to
                    send a test message through {{ $labels.target }} and find it in the probe mailbox within the
                    timeout for 5 minutes.""",
                ),
            ),
            Alert(
                "NetmonMailRoundtripSlow",
                named("""
                    histogram_quantile(0.9,
                      sum by (agency, agent, district, level, target, module, le) (
                        rate(probe_mail_roundtrip_delivery_duration_seconds_bucket[30m])
                      )
                    ) > 30"""),
                "15m", "warning", "target",
                Text("Thư chuyển chậm qua {{ $labels.target }}: p90 {{ $value | humanizeDuration }} ({{ $labels.name }})",
                     "Mail delivery slow via {{ $labels.target }}: p90 {{ $value | humanizeDuration }} ({{ $labels.name }})"),
                Text(
                    """{{ $labels.name }} ({{ $labels.agency }}): trong 30 phút qua, 90% thư kiểm tra qua
                    {{ $labels.target }} mất tới {{ $value | humanizeDuration }} từ khi máy chủ nhận đến khi vào hộp
                    thư (ngưỡng 30 giây).""",
                    """{{ $labels.name }} ({{ $labels.agency }}): 90% of test messages through {{ $labels.target }}
                    took up to {{ $value | humanizeDuration }} from acceptance to the mailbox over the last 30 minutes
                    (threshold 30 s).""",
                ),
            ),
            Alert(
                "NetmonMailMessagesLost", named("increase(probe_mail_roundtrip_messages_lost_total[1h]) > 0"), "1m",
                "critical", "target",
                Text("Thư kiểm tra bị mất qua {{ $labels.target }} ({{ $labels.name }})",
                     "Test mail lost via {{ $labels.target }} ({{ $labels.name }})"),
                Text(
                    """{{ $labels.name }} ({{ $labels.agency }}): {{ $value | printf "%.0f" }} thư kiểm tra gửi qua
                    {{ $labels.target }} trong giờ qua không bao giờ đến (đã quá thời hạn lost_after).""",
                    """{{ $labels.name }} ({{ $labels.agency }}): {{ $value | printf "%.0f" }} test message(s) sent
                    through {{ $labels.target }} in the last hour never arrived (lost_after passed).""",
                ),
            ),
            Alert(
                "NetmonMailAuthFailing",
                named(f'probe_failure_info{{reason=~"auth_failed|auth_unsupported"}} == 1\n{MAIL_TARGETS}'), "5m",
                "critical", "target",
                Text("Đăng nhập thư thất bại trên {{ $labels.target }} ({{ $labels.name }})",
                     "Mail login failing on {{ $labels.target }} ({{ $labels.name }})"),
                Text(
                    """{{ $labels.name }} ({{ $labels.agency }}): phép đo {{ $labels.module }} tới
                    {{ $labels.target }} thất bại với lỗi {{ $labels.reason }} trong 5 phút: máy chủ từ chối tài khoản
                    kiểm tra hoặc không còn hỗ trợ cơ chế đăng nhập. Người dùng có lẽ cũng bị ảnh hưởng.""",
                    """{{ $labels.name }} ({{ $labels.agency }}): the {{ $labels.module }} probe of
                    {{ $labels.target }} fails with {{ $labels.reason }} for 5 minutes: the server refuses the probe
                    account's credentials or no longer offers the login mechanism. Users are probably affected
                    too.""",
                ),
            ),
            Alert(
                "NetmonMailTLSFailing",
                named(f'probe_failure_info{{reason=~"tls_handshake|tls_verify|tls_version|no_starttls"}} == 1\n{MAIL_TARGETS}'),
                "5m", "critical", "target",
                Text("Lỗi TLS thư điện tử trên {{ $labels.target }} ({{ $labels.name }})",
                     "Mail TLS failing on {{ $labels.target }} ({{ $labels.name }})"),
                Text(
                    """{{ $labels.name }} ({{ $labels.agency }}): phép đo {{ $labels.module }} tới
                    {{ $labels.target }} thất bại với lỗi {{ $labels.reason }} trong 5 phút (không có STARTTLS, bắt
                    tay TLS thất bại, chứng thư số không tin cậy hoặc đã hết hạn, hoặc phiên bản TLS dưới mức tối
                    thiểu).""",
                    """{{ $labels.name }} ({{ $labels.agency }}): the {{ $labels.module }} probe of
                    {{ $labels.target }} fails with {{ $labels.reason }} for 5 minutes (no STARTTLS, failed handshake,
                    untrusted or expired certificate, or a TLS version below the minimum).""",
                ),
            ),
        ]),
        Group("netmon-certificates", [
            certificate_expiring(21, "warning", "(dưới 21 ngày).", "(under 21)."),
            certificate_expiring(7, "critical", "(dưới 7 ngày; số âm: đã hết hạn). Máy khách sẽ từ chối chứng thư này.",
                                 "(under 7; negative: already expired). Clients will refuse it."),
        ]),
    ],
)

DEVICES = RuleFile(
    "Routers and switches polled over SNMP (snmp_exporter's if_mib names, docs/snmp.md).\n"
    'Only interfaces with a description (ifAlias) are watched for "down": unused access ports are down all day.\n'
    "Packet counts come from the 64-bit ifHC* counters, or the 32-bit ones of devices without them (per interface);\n"
    "an interface is named by ifName, or ifDescr where the device has no ifXTable.",
    [Group("netmon-devices", [
        Alert(
            "NetmonDeviceUnreachable", named('probe_success{module="snmp"} == 0'), "5m", "warning", "target",
            Text("Thiết bị SNMP {{ $labels.target }} không trả lời ({{ $labels.name }})",
                 "SNMP device {{ $labels.target }} does not answer ({{ $labels.name }})"),
            Text(
                """Agent {{ $labels.agent }} của {{ $labels.name }} ({{ $labels.agency }}) không đọc được
                {{ $labels.target }} qua SNMP trong 5 phút.""",
                """Agent {{ $labels.agent }} of {{ $labels.name }} ({{ $labels.agency }}) has failed to poll
                {{ $labels.target }} over SNMP for 5 minutes.""",
            ),
        ),
        Alert(
            "NetmonInterfaceDown",
            named('(ifOperStatus{ifAlias!=""} == 2 or ifOperStatus{ifAlias!=""} == 7)\n'
                  "and on (agency, agent, target, ifIndex) (ifAdminStatus == 1)"),
            "5m", "critical", "target",
            Text("Cổng {{ or $labels.ifName $labels.ifDescr }} ({{ $labels.ifAlias }}) của {{ $labels.target }} ngừng hoạt động",
                 "Interface {{ or $labels.ifName $labels.ifDescr }} ({{ $labels.ifAlias }}) of {{ $labels.target }} is down"),
            Text(
                """{{ $labels.name }} ({{ $labels.agency }}): cổng {{ or $labels.ifName $labels.ifDescr }} {{ with $labels.ifAlias }}"{{ . }}" {{ end }}của
                thiết bị {{ $labels.target }} đang được bật (admin up) nhưng không hoạt động trong 5 phút.""",
                """{{ $labels.name }} ({{ $labels.agency }}): interface {{ or $labels.ifName $labels.ifDescr }} {{ with $labels.ifAlias }}"{{ . }}" {{ end }}of
                device {{ $labels.target }} is administratively up but operationally down for 5 minutes.""",
            ),
        ),
        Alert(
            "NetmonInterfaceErrors",
            named("""
                (rate(ifInErrors[5m]) + rate(ifOutErrors[5m]))
                /
                (
                  (rate(ifHCInUcastPkts[5m]) + rate(ifHCOutUcastPkts[5m]))
                  or
                  (rate(ifInUcastPkts[5m]) + rate(ifOutUcastPkts[5m]))
                )
                > 0.01"""),
            "10m", "warning", "target",
            Text("Lỗi gói trên {{ or $labels.ifName $labels.ifDescr }} của {{ $labels.target }}: {{ $value | humanizePercentage }} số gói",
                 "Errors on {{ or $labels.ifName $labels.ifDescr }} of {{ $labels.target }}: {{ $value | humanizePercentage }} of packets"),
            Text(
                """{{ $labels.name }} ({{ $labels.agency }}): cổng {{ or $labels.ifName $labels.ifDescr }} {{ with $labels.ifAlias }}"{{ . }}" {{ end }}của
                {{ $labels.target }} có hơn 1% gói lỗi trong 10 phút (hiện tại {{ $value | humanizePercentage }}):
                cáp hỏng, lệch chế độ song công (duplex) hoặc module quang hỏng.""",
                """{{ $labels.name }} ({{ $labels.agency }}): interface {{ or $labels.ifName $labels.ifDescr }} {{ with $labels.ifAlias }}"{{ . }}" {{ end }}of
                {{ $labels.target }} has had more than 1% errored packets for 10 minutes (now
                {{ $value | humanizePercentage }}): cabling, a duplex mismatch or a failing optic.""",
            ),
        ),
        Alert(
            "NetmonDeviceRebooted", named("increase(probe_snmp_device_reboots_total[15m]) > 0"), "1m", "warning", "target",
            Text("Thiết bị {{ $labels.target }} đã khởi động lại ({{ $labels.name }})",
                 "Device {{ $labels.target }} rebooted ({{ $labels.name }})"),
            Text(
                """{{ $labels.name }} ({{ $labels.agency }}): thiết bị {{ $labels.target }} đã khởi động lại trong
                15 phút qua (sysUpTime bị lùi lại). Do mất điện, thiết bị bị lỗi, hoặc bảo trì theo kế hoạch.""",
                """{{ $labels.name }} ({{ $labels.agency }}): device {{ $labels.target }} restarted in the last
                15 minutes (its sysUpTime went back). Power, a crash, or planned maintenance.""",
            ),
        ),
    ])],
)

SERVERS = RuleFile(
    "Servers watched over SSH without an agent (docs/ssh.md): the mail server's disks and Postfix queue.",
    [Group("netmon-servers", [
        Alert(
            "NetmonServerDiskFull", named("1 - probe_ssh_filesystem_avail_bytes / probe_ssh_filesystem_size_bytes > 0.9"),
            "10m", "critical", "target",
            Text("Ổ đĩa {{ $labels.mountpoint }} của {{ $labels.ssh_host }} đã đầy {{ $value | humanizePercentage }}",
                 "Disk {{ $labels.mountpoint }} of {{ $labels.ssh_host }} is {{ $value | humanizePercentage }} full"),
            Text(
                """Hệ thống tệp {{ $labels.mountpoint }} ({{ $labels.device }}) trên máy chủ {{ $labels.ssh_host }},
                do {{ $labels.name }} ({{ $labels.agency }}) kiểm tra, đã dùng hơn 90% trong 10 phút. Ổ chứa thư đầy
                sẽ làm ngừng việc chuyển thư.""",
                """Filesystem {{ $labels.mountpoint }} ({{ $labels.device }}) on server {{ $labels.ssh_host }},
                checked by {{ $labels.name }} ({{ $labels.agency }}), has been more than 90% used for 10 minutes. A
                full mail spool stops mail delivery.""",
            ),
        ),
        Alert(
            "NetmonMailQueueGrowing",
            named("""
                sum by (agency, agent, district, level, target, ssh_host) (probe_ssh_postfix_queue_messages{queue!="hold"}) > 100
                and
                sum by (agency, agent, district, level, target, ssh_host) (delta(probe_ssh_postfix_queue_messages{queue!="hold"}[30m])) > 0"""),
            "15m", "warning", "target",
            Text('Hàng đợi thư của {{ $labels.ssh_host }} tăng: {{ $value | printf "%.0f" }} thư',
                 'Mail queue of {{ $labels.ssh_host }} growing: {{ $value | printf "%.0f" }} messages'),
            Text(
                """Hàng đợi Postfix trên {{ $labels.ssh_host }} (do {{ $labels.name }}, {{ $labels.agency }} kiểm
                tra) có {{ $value | printf "%.0f" }} thư và tiếp tục tăng trong 15 phút: một máy chủ đích từ chối
                thư, DNS lỗi, hoặc máy chủ đang bị lợi dụng để gửi thư rác.""",
                """The Postfix queue on {{ $labels.ssh_host }} (checked by {{ $labels.name }}, {{ $labels.agency }})
                holds {{ $value | printf "%.0f" }} messages and has kept growing for 15 minutes: a destination
                refuses mail, DNS fails, or the server is being used to send spam.""",
            ),
        ),
    ])],
)

FAILURE_REASON = (
    '{{ range printf "probe_failure_info{agency=%q, agent=%q, target=%q}" $labels.agency $labels.agent $labels.target'
    " | query }}{{ .Labels.reason }}{{ end }}"
)

PORTALS = RuleFile(
    "Web portals and services (http prober): the provincial portal, the public-services portal, document\n"
    "management and interconnection endpoints. http targets are recognised by probe_http_status_code.\n"
    "Transactions (multi-step checks, docs/transactions.md) by probe_transaction_failed_step, which names the step.",
    [Group("netmon-portals", [
        Alert(
            "NetmonPortalDown", named("probe_success == 0\nand on (agency, agent, target, module) probe_http_status_code"),
            "3m", "critical", "target",
            Text("Cổng thông tin {{ $labels.target }} không truy cập được", "Portal {{ $labels.target }} is down"),
            Text(
                """Phép đo http tới {{ $labels.target }} (module {{ $labels.module }}) từ agent {{ $labels.agent }}
                của {{ $labels.name }} ({{ $labels.agency }}) thất bại liên tục trong 3 phút.""",
                """The http probe of {{ $labels.target }} (module {{ $labels.module }}) from agent
                {{ $labels.agent }} of {{ $labels.name }} ({{ $labels.agency }}) has failed for 3 minutes.""",
            ),
        ),
        Alert(
            "NetmonPortalContentStale", named("probe_http_content_age_seconds > 7 * 86400"), "1h", "warning", "target",
            Text("Cổng thông tin {{ $labels.target }} không cập nhật trong {{ $value | humanizeDuration }}",
                 "Portal {{ $labels.target }} not updated for {{ $value | humanizeDuration }}"),
            Text(
                """Trang {{ $labels.target }} do {{ $labels.name }} ({{ $labels.agency }}) đo được sửa lần cuối cách
                đây {{ $value | humanizeDuration }} (Last-Modified; ngưỡng 7 ngày): hệ thống đăng tin có thể bị treo,
                hoặc bộ nhớ đệm đang phục vụ bản cũ.""",
                """The page probed as {{ $labels.target }} by {{ $labels.name }} ({{ $labels.agency }}) was last
                modified {{ $value | humanizeDuration }} ago (Last-Modified; threshold 7 days): the publishing system
                may be stuck, or a cache serves an old copy.""",
            ),
        ),
        Alert(
            "NetmonTransactionFailing", named("probe_transaction_failed_step > 0"), "5m", "critical", "target",
            Text('Giao dịch {{ $labels.target }} lỗi ở bước "{{ $labels.step }}" ({{ $labels.name }})',
                 'Transaction {{ $labels.target }} fails at step "{{ $labels.step }}" ({{ $labels.name }})'),
            Text(
                """Phép đo nhiều bước {{ $labels.target }} (module {{ $labels.module }}) từ agent {{ $labels.agent }}
                của {{ $labels.name }} ({{ $labels.agency }}) thất bại ở bước {{ $value | printf "%.0f" }}
                "{{ $labels.step }}" liên tục trong 5 phút, lỗi """ + FAILURE_REASON + """: người dùng không hoàn
                thành được giao dịch này (đăng nhập, tra cứu thủ tục, hoặc gọi dịch vụ liên thông văn bản).""",
                """The multi-step check {{ $labels.target }} (module {{ $labels.module }}) from agent
                {{ $labels.agent }} of {{ $labels.name }} ({{ $labels.agency }}) has failed at step
                {{ $value | printf "%.0f" }} "{{ $labels.step }}" for 5 minutes, with """ + FAILURE_REASON + """:
                users cannot complete it (login, procedure search, or a call to the document interconnection
                service).""",
            ),
        ),
    ])],
)

COLLECTOR = RuleFile(
    "The collector itself (docs/collector.md). If it is down, every agency's series vanish and no agency alert can fire.",
    [Group("netmon-collector", [
        Alert(
            "NetmonCollectorDown", 'up{job="netmon-collector", agent=""} == 0', "2m", "critical", "collector",
            Text("Không lấy được dữ liệu từ bộ thu thập {{ $labels.instance }}",
                 "Collector {{ $labels.instance }} cannot be scraped"),
            Text(
                """Prometheus không lấy được dữ liệu từ bộ thu thập netmon tại {{ $labels.instance }} trong 2 phút:
                không có dữ liệu của cơ quan nào đến, và không cảnh báo mất kết nối cơ quan nào có thể phát ra khi
                bộ thu thập ngừng.""",
                """Prometheus has not scraped the netmon collector at {{ $labels.instance }} for 2 minutes: no
                agency's data arrives, and no agency-offline alert can fire while it is down.""",
            ),
        ),
        Alert(
            "NetmonCollectorQueueGrowing", """
                netmon_collector_remote_write_oldest_unsent_age_seconds > 300
                and
                deriv(netmon_collector_remote_write_queue_pending_samples[10m]) > 0""",
            "10m", "warning", "collector",
            Text("Hàng đợi remote_write tới {{ $labels.remote }} đang tăng",
                 "remote_write queue to {{ $labels.remote }} is growing"),
            Text(
                """Hàng đợi của bộ thu thập tới {{ $labels.remote }} có mẫu cũ hơn 5 phút và tiếp tục tăng (mẫu chưa
                gửi cũ nhất: {{ $value | humanizeDuration }}). Cơ sở dữ liệu chuỗi thời gian (TSDB) chậm hoặc không
                truy cập được; hàng đợi bỏ các mẫu cũ nhất khi đạt max_bytes hoặc max_age.""",
                """The collector's queue to {{ $labels.remote }} holds samples older than 5 minutes and keeps growing
                (oldest unsent: {{ $value | humanizeDuration }}). The TSDB is slow or unreachable; the queue drops
                the oldest samples when it reaches its max_bytes or max_age.""",
            ),
        ),
        Alert(
            "NetmonCollectorRemoteWriteFailing", """
                sum by (instance, remote) (rate(netmon_collector_remote_write_requests_total{result!="success"}[5m])) > 0
                unless
                sum by (instance, remote) (rate(netmon_collector_remote_write_requests_total{result="success"}[5m])) > 0""",
            "5m", "critical", "collector",
            Text("remote_write tới {{ $labels.remote }} thất bại", "remote_write to {{ $labels.remote }} failing"),
            Text(
                """Mọi yêu cầu remote_write từ bộ thu thập tới {{ $labels.remote }} đều thất bại trong 5 phút
                ({{ $value | printf "%.2f" }} yêu cầu lỗi/giây). Các mẫu đang chờ trong hàng đợi.""",
                """Every remote_write request from the collector to {{ $labels.remote }} has failed for 5 minutes
                ({{ $value | printf "%.2f" }} failed requests/s). Samples wait in the queue.""",
            ),
        ),
        Alert(
            "NetmonCollectorDroppingSamples",
            "sum by (instance, remote, reason) (increase(netmon_collector_remote_write_samples_dropped_total[15m])) > 0",
            "1m", "critical", "collector",
            Text("Bộ thu thập đã bỏ mẫu gửi tới {{ $labels.remote }} ({{ $labels.reason }})",
                 "Collector dropped samples bound for {{ $labels.remote }} ({{ $labels.reason }})"),
            Text(
                """{{ $value | printf "%.0f" }} mẫu trên đường tới {{ $labels.remote }} đã bị bỏ trong 15 phút qua
                (lý do {{ $labels.reason }}): chúng bị thiếu vĩnh viễn trong TSDB.""",
                """{{ $value | printf "%.0f" }} samples were given up in the last 15 minutes on the way to
                {{ $labels.remote }} (reason {{ $labels.reason }}): they are missing from the TSDB for good.""",
            ),
        ),
        Alert(
            "NetmonCollectorRejectingPushes", "sum by (instance, reason) (rate(netmon_collector_samples_rejected_total[5m])) > 0",
            "10m", "warning", "collector",
            Text("Bộ thu thập từ chối mẫu được đẩy lên ({{ $labels.reason }})",
                 "Collector rejects pushed samples ({{ $labels.reason }})"),
            Text(
                """Bộ thu thập từ chối các mẫu do agent đẩy lên với lý do {{ $labels.reason }} trong 10 phút
                ({{ $value | printf "%.1f" }} mẫu/giây): agent dùng sai token, cấu hình hỏng, hoặc quá tải.""",
                """The collector has refused pushed samples with reason {{ $labels.reason }} for 10 minutes
                ({{ $value | printf "%.1f" }} samples/s): an agent with a wrong token, a broken config, or
                overload.""",
            ),
        ),
    ])],
)

AVAILABILITY = RuleFile(
    "Availability ratios for the dashboards and the SLA report (0..1). Average them further with avg_over_time,\n"
    "e.g. a month: avg_over_time(agency:netmon_agent_up:avg5m[30d]).",
    [
        Group("netmon-availability", [
            Record("agency:netmon_agent_up:avg5m", "max by (agency, district, level) (avg_over_time(netmon_agent_up[5m]))"),
            Record("target:probe_success:avg5m",
                   "avg by (agency, agent, district, level, target, module) (avg_over_time(probe_success[5m]))"),
            Record("target:probe_success:avg1h",
                   "avg by (agency, agent, district, level, target, module) (avg_over_time(probe_success[1h]))"),
            Record("agency:probe_success:avg1h", "avg by (agency, district, level) (target:probe_success:avg1h)"),
        ]),
        Group(
            "netmon-availability-minutes",
            [Record("agency_service:probe_success:up1m", """
                min by (agency, district, level, service) (
                  avg by (agency, district, level, service, target, module) (avg_over_time(probe_success{service!=""}[1m]))
                ) >= bool 0.5""")],
            interval="1m",
            comment="The monthly availability report (docs/report.md) counts these samples as minutes: keep the interval at 1m.\n"
                    "1 when every target of the agency's service (targets labelled `service`) succeeded in at least half of its\n"
                    "probes over the last minute (averaged over the agency's agents), 0 otherwise; no sample when nothing was probed.",
        ),
    ],
)

RULE_FILES = {
    "agency.yml": AGENCY,
    "network.yml": NETWORK,
    "mail.yml": MAIL,
    "devices.yml": DEVICES,
    "servers.yml": SERVERS,
    "portals.yml": PORTALS,
    "collector.yml": COLLECTOR,
    "availability.yml": AVAILABILITY,
}


# --- writing YAML --------------------------------------------------------------------------------------------------


def runbook_url(base: str, alert: str) -> str:
    """The alert's section of docs/runbooks.md: its heading is the alert name, the anchor that name in lower case."""
    return f"{base}#{alert.lower()}"


def annotations(alert: Alert, base: str) -> dict[str, str]:
    return {
        "summary": " ".join(alert.summary.vi.split()),
        "description": " ".join(alert.description.vi.split()),
        "summary_en": " ".join(alert.summary.en.split()),
        "description_en": " ".join(alert.description.en.split()),
        "runbook_url": runbook_url(base, alert.name),
    }


def scalar(text: str) -> str:
    """One line of YAML: plain where YAML reads it back unchanged, otherwise (and for templates) double-quoted; JSON's
    quoting is YAML's."""
    try:
        if "{{" not in text and text.strip() == text and yaml.safe_load(f"key: {text}") == {"key": text}:
            return text
    except yaml.YAMLError:
        pass
    return json.dumps(text, ensure_ascii=False)


def entry(key: str, text: str, indent: int, folded: bool = False) -> list[str]:
    """`key: value`; multi-line text as a literal block, long prose (folded=True) as a folded block."""
    pad = " " * indent
    if "\n" in text:
        return [f"{pad}{key}: |", *(f"{pad}  {line}".rstrip() for line in text.splitlines())]
    if folded and len(pad) + len(key) + len(text) + 2 > WIDTH:
        # wrap between words, never inside a {{ template }} (\0 holds its spaces meanwhile)
        kept = re.sub(r"\{\{.*?\}\}", lambda match: match.group(0).replace(" ", "\0"), text)
        lines = textwrap.wrap(kept, WIDTH - indent - 2, break_long_words=False, break_on_hyphens=False)
        return [f"{pad}{key}: >-", *(f"{pad}  {line}".replace("\0", " ") for line in lines)]
    return [f"{pad}{key}: {scalar(text)}"]


def rule_lines(rule: Alert | Record, base: str) -> list[str]:
    expr = textwrap.dedent(rule.expr).strip()
    if isinstance(rule, Record):
        return [f"      - record: {rule.name}", *entry("expr", expr, 8)]
    lines = [f"      - alert: {rule.name}", *entry("expr", expr, 8), f"        for: {rule.for_}", "        labels:",
             f"          severity: {rule.severity}", f"          scope: {rule.scope}", "        annotations:"]
    for key, value in annotations(rule, base).items():
        lines += entry(key, value, 10, folded=key.startswith("description"))
    return lines


def comment(text: str, indent: int = 0) -> list[str]:
    return [f"{' ' * indent}# {line}" for line in text.splitlines()]


def render(rule_file: RuleFile, base: str) -> str:
    lines = ["# Generated by config/prometheus/generate.py: edit the rules there and run it again.",
             *comment(rule_file.comment), "groups:"]
    for number, group in enumerate(rule_file.groups):
        if number:
            lines.append("")
        lines += comment(group.comment, 2) if group.comment else []
        lines.append(f"  - name: {group.name}")
        lines += [f"    interval: {group.interval}"] if group.interval else []
        lines.append("    rules:")
        for position, rule in enumerate(group.rules):
            if position and isinstance(rule, Alert):
                lines.append("")
            lines += rule_lines(rule, base)
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != expected(rule_file, base):  # the hand-made YAML must read back as meant
        raise AssertionError(f"rendering does not read back:\n{text}")
    return text


def expected(rule_file: RuleFile, base: str) -> dict:
    def rule_dict(rule: Alert | Record) -> dict:
        expr = textwrap.dedent(rule.expr).strip()
        if isinstance(rule, Record):
            return {"record": rule.name, "expr": expr + ("\n" if "\n" in expr else "")}
        return {"alert": rule.name, "expr": expr + ("\n" if "\n" in expr else ""), "for": rule.for_,
                "labels": {"severity": rule.severity, "scope": rule.scope}, "annotations": annotations(rule, base)}

    return {"groups": [
        {"name": group.name, **({"interval": group.interval} if group.interval else {}),
         "rules": [rule_dict(rule) for rule in group.rules]}
        for group in rule_file.groups
    ]}


def write_all(out_dir: Path, base: str = DEFAULT_RUNBOOK_BASE) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, rule_file in RULE_FILES.items():
        path = out_dir / file_name
        path.write_text(render(rule_file, base), encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runbook-base", default=DEFAULT_RUNBOOK_BASE,
                        help="URL of the published docs/runbooks.md; each alert links to BASE#<alertname in lower case>")
    parser.add_argument("out_dir", nargs="?", type=Path, default=HERE / "rules")
    args = parser.parse_args()
    write_all(args.out_dir, args.runbook_base.rstrip("#"))


if __name__ == "__main__":
    main()
