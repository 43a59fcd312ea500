"""Generate the Grafana dashboards of dashboards/*.json.

    python dashboards/generate.py [OUT_DIR]      # default: the directory of this file

The JSON files are committed; tests/test_dashboards.py checks that running this again gives the same files.
Every query uses the names the agent and the collector emit (docs/metrics.md, docs/collector.md) and the
recording rules of config/prometheus/rules/. Series carry `agency`, `agent`, `district`, `level` (added by the
collector); human names come from `netmon_agency_info`, joined on `agency`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24
NODE_EXPORTER_FULL = "/d/rYdddlPWk/node-exporter-full"  # grafana.com dashboard 1860
AGENCY_NAME = "* on (agency) group_left (name) netmon_agency_info"
HTTP_TARGETS = "and on (agency, agent, target, module) probe_http_status_code"
MAIL_TARGETS = (
    "and on (agency, agent, target, module) "
    "(probe_smtp_duration_seconds or probe_imap_duration_seconds or probe_pop3_duration_seconds)"
)
UP_DOWN = [
    {"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0}, "1": {"text": "UP", "color": "green", "index": 1}}}
]
RED_BELOW_ONE = {"mode": "absolute", "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}]}
NO_FAULT = [{"type": "value", "options": {"0": {"text": "no fault (không lỗi)", "color": "green", "index": 0}}}]
RED_FROM_ONE = {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}


def bits_per_second(direction: str, selector: str) -> str:
    """Interface traffic: the 64-bit counter where the interface has one, else the 32-bit one (old devices, SNMPv1);
    `or` picks per interface, and rate() takes a 32-bit wrap for a counter reset (docs/snmp.md)."""
    return (f"(rate(ifHC{direction}Octets{{{selector}}}[$__rate_interval])"
            f" or rate(if{direction}Octets{{{selector}}}[$__rate_interval])) * 8")


def link_bits_per_second(selector: str) -> str:
    """Interface speed: ifHighSpeed (Mbit/s) where the device has it, else ifSpeed (bit/s); 0 means unknown."""
    return f"((ifHighSpeed{{{selector}}} > 0) * 1e6 or (ifSpeed{{{selector}}} > 0))"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    heatmap: bool = False


@dataclass(frozen=True)
class Panel:
    kind: str
    title: str
    unit: str
    queries: list[Query]
    width: int = 12
    height: int = 8
    description: str = ""
    options: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)
    repeat: str = ""
    repeat_direction: str = "h"  # "v": copies stacked under the panel, keeping its width (side-by-side panels of one row)


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    query: str = ""  # label_values(...); empty for the datasource variable
    multi: bool = True


def datasource_variable() -> dict:
    return {
        "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
        "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": [],
    }


def query_variable(variable: Variable) -> dict:
    return {
        "name": variable.name, "label": variable.label, "type": "query", "datasource": DATASOURCE,
        "query": {"query": variable.query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": variable.query, "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": [], "current": {},
        "multi": variable.multi, "includeAll": variable.multi, **({"allValue": ".*"} if variable.multi else {}),
    }


def target_json(query: Query, ref_id: str) -> dict:
    return {
        "refId": ref_id, "datasource": DATASOURCE, "expr": query.expr, "legendFormat": query.legend or "__auto",
        "range": not query.instant, "instant": query.instant, "editorMode": "code",
        **({"format": "heatmap"} if query.heatmap else {}),
    }


def panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    return {
        "id": panel_id, "type": panel.kind, "title": panel.title, "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit, **panel.defaults}, "overrides": []},
        "options": panel.options,
        "targets": [target_json(query, chr(ord("A") + index)) for index, query in enumerate(panel.queries)],
        **({"repeat": panel.repeat, "repeatDirection": panel.repeat_direction, "maxPerRow": 4} if panel.repeat else {}),
    }


def laid_out(panels: list[Panel]) -> list[dict]:
    """Left to right, top to bottom, in rows of GRID_WIDTH."""
    placed, x, y, row_height = [], 0, 0, 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        placed.append(panel_json(panel, panel_id, x, y))
        x, row_height = x + panel.width, max(row_height, panel.height)
    return placed


def dashboard(uid: str, title: str, description: str, variables: list[Variable], panels: list[Panel], links: list[dict] | None = None) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["egov-netmon"], "timezone": "browser",
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "links": [{"type": "dashboards", "tags": ["egov-netmon"], "asDropdown": True, "title": "egov-netmon"}, *(links or [])],
        "templating": {"list": [datasource_variable(), *map(query_variable, variables)]},
        "annotations": {"list": []},
        "panels": laid_out(panels),
    }


def stat(title: str, unit: str, queries: list[Query], width: int = 6, **extra) -> Panel:
    return Panel("stat", title, unit, queries, width=width, height=extra.pop("height", 4),
                 options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background", "textMode": "value_and_name"}, **extra)


def timeseries(title: str, unit: str, queries: list[Query], width: int = 12, stacked: bool = False, **extra) -> Panel:
    custom = {"custom": {"stacking": {"mode": "normal" if stacked else "none"}, "fillOpacity": 20 if stacked else 0}}
    return Panel("timeseries", title, unit, queries, width=width,
                 options={"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
                 defaults={**custom, **extra.pop("defaults", {})}, **extra)


def table(title: str, unit: str, queries: list[Query], width: int = 12, **extra) -> Panel:
    return Panel("table", title, unit, queries, width=width, options={"showHeader": True}, **extra)


def heatmap(title: str, unit: str, expr: str, width: int = 12) -> Panel:
    return Panel("heatmap", title, unit, [Query(expr, "{{le}}", heatmap=True)], width=width,
                 options={"calculate": False, "yAxis": {"unit": unit}, "cellGap": 1, "color": {"scheme": "Oranges", "mode": "scheme"}})


DISTRICT = Variable("district", "District (Huyện)", "label_values(netmon_agency_info, district)")
AGENCY = Variable("agency", "Agency (Cơ quan)", 'label_values(netmon_agency_info{district=~"$district"}, agency)')
ONE_AGENCY = Variable("agency", "Agency (Cơ quan)", 'label_values(netmon_agency_info{district=~"$district"}, agency)', multi=False)


def province_overview() -> dict:
    selected = 'district=~"$district"'
    return dashboard(
        "netmon-province", "Province overview (Tổng quan toàn tỉnh)",
        "Every agency's status on the dedicated data network (TSLCD), mail, portals and certificates.",
        [DISTRICT],
        [
            stat("Agencies offline (Cơ quan mất kết nối)", "none",
                 [Query(f"count(agency:netmon_agent_up:max{{{selected}}} == 0) or vector(0)", "offline")],
                 defaults={"thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}}),
            stat("Agencies online (Cơ quan trực tuyến)", "none",
                 [Query(f"count(agency:netmon_agent_up:max{{{selected}}} == 1) or vector(0)", "online")]),
            stat("Mail roundtrip (Thư điện tử)", "none",
                 [Query("min(probe_mail_roundtrip_delivery_success)", "delivered")],
                 defaults={"mappings": UP_DOWN, "thresholds": RED_BELOW_ONE}),
            stat("Portals up (Cổng thông tin)", "percentunit",
                 [Query(f"avg(probe_success {HTTP_TARGETS})", "portals up")]),
            stat("Agencies in $district (Trạng thái cơ quan)", "none",
                 [Query(f"agency:netmon_agent_up:max{{{selected}}} {AGENCY_NAME}", "{{name}} ({{level}})", instant=True)],
                 width=24, height=6, repeat="district",
                 description="One cell per agency: green UP, red DOWN (no agent reported within its TTL).",
                 defaults={"mappings": UP_DOWN, "thresholds": RED_BELOW_ONE}),
            table("RTT to the data center (Độ trễ TSLCD)", "s",
                  [Query(f"max by (agency, name, district, level) (probe_icmp_rtt_avg_seconds{{{selected}}} {AGENCY_NAME})", "{{name}}", instant=True)]),
            table("Packet loss to the data center (Mất gói TSLCD)", "percentunit",
                  [Query(f"max by (agency, name, district, level) (target:probe_icmp_packet_loss:ratio_rate5m{{{selected}}} {AGENCY_NAME})", "{{name}}", instant=True)]),
            timeseries("RTT p90 by agency", "s",
                       [Query(f"max by (agency, name) (target:probe_icmp_rtt_seconds:p90_rate5m{{{selected}}} {AGENCY_NAME})", "{{name}}")]),
            table("Certificates expiring first (Chứng thư số sắp hết hạn)", "s",
                  [Query("bottomk(10, probe_ssl_earliest_cert_expiry - time())", "{{target}}", instant=True)],
                  defaults={"thresholds": {"mode": "absolute", "steps": [
                      {"color": "red", "value": None}, {"color": "orange", "value": 7 * 86400}, {"color": "green", "value": 21 * 86400}]}}),
        ],
    )


# One variable per prober on the agency page: each lists only the targets its panels can show, so any choice
# shows data. A target is the prober's by a series only that prober emits.
ICMP_TARGET = Variable("icmp_target", "ICMP target (Đích ping)", 'label_values(probe_icmp_packets_sent_total{agency="$agency"}, target)')
HTTP_TARGET = Variable("http_target", "Web target (Trang web)", 'label_values(probe_http_status_code{agency="$agency"}, target)')
PATH_TARGET = Variable("path_target", "Path target (Dò đường)", 'label_values(probe_path_hops{agency="$agency"}, target)')
DNS_TARGET = Variable("dns_target", "DNS target (Truy vấn DNS)", 'label_values(probe_dns_answer_rrs{agency="$agency"}, target)')


def agency_detail() -> dict:
    agency = 'agency="$agency"'
    icmp, http, dns, path = (
        f'agency="$agency", target=~"${variable.name}"' for variable in (ICMP_TARGET, HTTP_TARGET, DNS_TARGET, PATH_TARGET)
    )
    return dashboard(
        "netmon-agency", "Agency detail (Chi tiết cơ quan)",
        "One agency: its probes, its LAN devices and its agent host.",
        [DISTRICT, ONE_AGENCY, ICMP_TARGET, HTTP_TARGET, DNS_TARGET, PATH_TARGET],
        [
            stat("Agency (Cơ quan)", "none", [Query(f"netmon_agency_info{{{agency}}}", "{{name}}", instant=True)], width=12),
            stat("Agents up", "none", [Query(f"netmon_agent_up{{{agency}}}", "{{agent}}", instant=True)], width=12,
                 defaults={"mappings": UP_DOWN, "thresholds": RED_BELOW_ONE}),
            Panel("state-timeline", "Probe results (Kết quả đo)", "none",
                  [Query(f"probe_success{{{agency}}}", "{{target}} ({{module}})")], width=24,
                  description="Every target of the agency, whatever its prober.",
                  defaults={"mappings": UP_DOWN, "thresholds": RED_BELOW_ONE}),
            heatmap("RTT to $icmp_target, all replies (Phân bố độ trễ)", "s",
                    f"sum by (le) (rate(probe_icmp_rtt_seconds_bucket{{{icmp}}}[$__rate_interval]))"),
            timeseries("Packet loss to $icmp_target (Mất gói)", "percentunit",
                       [Query(f"target:probe_icmp_packet_loss:ratio_rate5m{{{icmp}}}", "{{target}}")]),
            stat("Path to $path_target: fault hop (Chặng gây mất gói)", "none",
                 [Query(f"probe_path_fault_hop{{{path}}}", "{{target}} {{hop_address}}", instant=True)], width=24,
                 description="The TTL of the first hop from which loss persists to the destination in the last trace, "
                             "with its address; 0: no fault.",
                 defaults={"mappings": NO_FAULT, "thresholds": RED_FROM_ONE}),
            timeseries("Path to $path_target: loss per hop (Mất gói theo chặng)", "percentunit",
                       [Query(f"probe_path_hop_loss_ratio{{{path}}}", "{{target}} hop {{ttl}} {{hop_address}}")],
                       description="Each trace's loss per hop (TTL) with the hop's address. Loss that starts at a hop and "
                                   "persists to the destination is where the path breaks (the fault hop, NetmonPathDegraded); "
                                   "loss at one hop that later hops do not show is that router rate-limiting its replies."),
            timeseries("Path to $path_target: RTT per hop (Độ trễ theo chặng)", "s",
                       [Query(f"probe_path_hop_rtt_avg_seconds{{{path}}}", "{{target}} hop {{ttl}} {{hop_address}}")],
                       description="Average round-trip time to each hop in each trace; a step up from one hop to the next is "
                                   "the link between them."),
            timeseries("HTTP phases of $http_target (Thời gian truy cập web)", "s",
                       [Query(f"probe_http_duration_seconds{{{http}}}", "{{target}} {{phase}}")], stacked=True),
            timeseries("DNS query time of $dns_target (Phân giải tên miền)", "s",
                       [Query(f"probe_dns_query_duration_seconds{{{dns}}}", "{{target}}")]),
            timeseries("LAN device traffic (Lưu lượng thiết bị mạng)", "bps",
                       [Query(bits_per_second("In", agency), "{{target}} {{ifName}} in"),
                        Query(bits_per_second("Out", agency), "{{target}} {{ifName}} out")],
                       description="64-bit counters where the device has them, else the 32-bit ifInOctets/ifOutOctets."),
            table("LAN device interfaces (Cổng thiết bị)", "none",
                  [Query(f"ifOperStatus{{{agency}}}", "{{target}} {{ifName}}", instant=True)],
                  defaults={"mappings": UP_DOWN}),
            timeseries("Agent host CPU (Máy chủ agent)", "percentunit",
                       [Query(f'1 - avg by (agent) (rate(node_cpu_seconds_total{{{agency}, mode="idle"}}[$__rate_interval]))', "{{agent}}")],
                       description="Full host view: the Node Exporter Full dashboard works on the same series."),
            timeseries("Agent host memory used", "percentunit",
                       [Query(f"1 - node_memory_MemAvailable_bytes{{{agency}}} / node_memory_MemTotal_bytes{{{agency}}}", "{{agent}}")]),
        ],
        links=[{"type": "link", "title": "Node Exporter Full", "url": NODE_EXPORTER_FULL, "targetBlank": True}],
    )


def mail_system() -> dict:
    return dashboard(
        "netmon-mail", "Mail system (Hệ thống thư điện tử)",
        "SMTP/IMAP/POP3 phases, delivery time of the roundtrip probe, queue, TLS and logins.",
        [DISTRICT, AGENCY],
        [
            timeseries(f"{protocol.upper()} phases", "s",
                       [Query(f'probe_{protocol}_duration_seconds{{agency=~"$agency"}}', "{{target}} {{phase}}")], width=8, stacked=True)
            for protocol in ("smtp", "imap", "pop3")
        ] + [
            heatmap("Delivery time (Thời gian chuyển thư)", "s",
                    'sum by (le) (rate(probe_mail_roundtrip_delivery_duration_seconds_bucket{agency=~"$agency"}[$__rate_interval]))'),
            timeseries("Last delivery time and p90", "s", [
                Query('probe_mail_roundtrip_last_delivery_duration_seconds{agency=~"$agency"}', "{{agency}} {{target}} last"),
                Query('histogram_quantile(0.9, sum by (target, le) (rate(probe_mail_roundtrip_delivery_duration_seconds_bucket{agency=~"$agency"}[30m])))',
                      "{{target}} p90"),
            ]),
            timeseries("Queue depth (Hàng đợi thư)", "none",
                       [Query('probe_ssh_postfix_queue_messages{agency=~"$agency"}', "{{ssh_host}} {{queue}}")], stacked=True),
            timeseries("Roundtrip messages late and lost", "none", [
                Query('increase(probe_mail_roundtrip_messages_late_total{agency=~"$agency"}[1h])', "{{agency}} late"),
                Query('increase(probe_mail_roundtrip_messages_lost_total{agency=~"$agency"}[1h])', "{{agency}} lost"),
            ]),
            table("TLS certificate verified (Chứng thư số)", "none",
                  [Query(f'probe_tls_certificate_verified{{agency=~"$agency"}} {MAIL_TARGETS}', "{{target}}", instant=True)],
                  defaults={"mappings": [{"type": "value", "options": {"0": {"text": "NOT VERIFIED", "color": "red"}, "1": {"text": "verified", "color": "green"}}}]}),
            table("Certificate expires in", "s",
                  [Query(f'probe_ssl_earliest_cert_expiry{{agency=~"$agency"}} - time() {MAIL_TARGETS}', "{{target}}", instant=True)]),
            timeseries("Failures by reason (Lỗi đăng nhập, TLS)", "none", [
                Query(f'probe_failure_info{{agency=~"$agency", reason!="none"}} {MAIL_TARGETS}', "{{target}} {{reason}}"),
            ], description="auth_failed / auth_unsupported: logins refused; tls_*, no_starttls: TLS."),
        ],
    )


def network_devices() -> dict:
    device = 'agency=~"$agency", target=~"$device"'
    return dashboard(
        "netmon-devices", "Network devices (Thiết bị mạng)",
        "Routers and switches polled over SNMP (snmp_exporter if_mib names).",
        [DISTRICT, AGENCY, Variable("device", "Device (Thiết bị)", 'label_values(ifOperStatus{agency=~"$agency"}, target)')],
        [
            timeseries("Traffic in (Lưu lượng vào)", "bps",
                       [Query(bits_per_second("In", device), "{{target}} {{ifName}} {{ifAlias}}")],
                       description="ifHCInOctets, or the 32-bit ifInOctets on devices without 64-bit counters."),
            timeseries("Traffic out (Lưu lượng ra)", "bps",
                       [Query(bits_per_second("Out", device), "{{target}} {{ifName}} {{ifAlias}}")],
                       description="ifHCOutOctets, or the 32-bit ifOutOctets on devices without 64-bit counters."),
            timeseries("Utilization (Mức sử dụng băng thông)", "percentunit", [
                Query(f"{bits_per_second('In', device)} / {link_bits_per_second(device)}", "{{target}} {{ifName}} in"),
                Query(f"{bits_per_second('Out', device)} / {link_bits_per_second(device)}", "{{target}} {{ifName}} out"),
            ], description="Bits per second against ifHighSpeed (Mbit/s), or ifSpeed (bit/s) where the device has no ifHighSpeed."),
            timeseries("Errors and discards (Lỗi gói)", "pps", [
                Query(f"rate(ifInErrors{{{device}}}[$__rate_interval])", "{{target}} {{ifName}} in errors"),
                Query(f"rate(ifOutErrors{{{device}}}[$__rate_interval])", "{{target}} {{ifName}} out errors"),
                Query(f"rate(ifInDiscards{{{device}}}[$__rate_interval])", "{{target}} {{ifName}} in discards"),
                Query(f"rate(ifOutDiscards{{{device}}}[$__rate_interval])", "{{target}} {{ifName}} out discards"),
            ]),
            Panel("state-timeline", "Interface status (Trạng thái cổng)", "none",
                  [Query(f"ifOperStatus{{{device}}}", "{{target}} {{ifName}}")], width=24,
                  defaults={"mappings": [{"type": "value", "options": {
                      "1": {"text": "up", "color": "green"}, "2": {"text": "down", "color": "red"},
                      "5": {"text": "dormant", "color": "blue"}, "7": {"text": "lowerLayerDown", "color": "orange"}}}]}),
            table("Status changes in the last hour", "none",
                  [Query(f"changes(ifOperStatus{{{device}}}[1h])", "{{target}} {{ifName}}", instant=True)]),
            table("Uptime and reboots (Khởi động lại)", "s", [
                Query(f"probe_snmp_device_uptime_seconds{{{device}}}", "{{target}} uptime", instant=True),
            ]),
            timeseries("Reboots in 24 h", "none",
                       [Query(f"increase(probe_snmp_device_reboots_total{{{device}}}[24h])", "{{target}}")]),
            timeseries("SNMP poll time", "s", [Query(f'probe_duration_seconds{{{device}, module="snmp"}}', "{{target}}")]),
        ],
    )


TRANSACTION = Variable("transaction", "Transaction (Giao dịch)", 'label_values(probe_transaction_steps{agency=~"$agency"}, target)')


def transaction_panels() -> list[Panel]:
    """One row per transaction (the `transaction` variable): its result, the step that failed, each step's time."""
    selected = 'agency=~"$agency", target=~"$transaction"'
    per_transaction = {"repeat": "transaction", "repeat_direction": "v", "height": 6}
    return [
        stat("$transaction: result (Kết quả)", "none",
             [Query(f"probe_success{{{selected}}} and on (agency, agent, target, module) probe_transaction_steps", "{{agent}}")],
             defaults={"mappings": UP_DOWN, "thresholds": RED_BELOW_ONE}, **per_transaction),
        table("$transaction: failed step (Bước lỗi)", "none", [
            Query(f"probe_transaction_failed_step{{{selected}}}", "{{agent}} {{step}}", instant=True),
            Query(f"probe_failure_info{{{selected}}} and on (agency, agent, target, module) probe_transaction_steps",
                  "{{agent}} {{reason}}", instant=True),
        ], width=6, description="Number and name of the step that failed (0: every step passed), and the reason.",
              **per_transaction),
        timeseries("$transaction: duration per step (Thời gian từng bước)", "s",
                   [Query(f"probe_transaction_step_duration_seconds{{{selected}}}", "{{step}} ({{agent}})")],
                   stacked=True, **per_transaction),
    ]


def portals() -> dict:
    selected = 'agency=~"$agency", target=~"$target"'
    return dashboard(
        "netmon-portals", "Portals and services (Cổng thông tin và dịch vụ)",
        "Provincial portal, public-services portal (Cổng dịch vụ công), document management and interconnection endpoints.",
        [DISTRICT, AGENCY, Variable("target", "Service (Dịch vụ)", 'label_values(probe_http_status_code{agency=~"$agency"}, target)'),
         TRANSACTION],
        [
            table("Availability over the range (Tỷ lệ sẵn sàng)", "percentunit",
                  [Query(f"avg_over_time(probe_success{{{selected}}}[$__range]) {HTTP_TARGETS}", "{{target}} from {{agency}}", instant=True)],
                  defaults={"decimals": 2}),
            table("HTTP status (Mã trạng thái)", "none",
                  [Query(f"probe_http_status_code{{{selected}}}", "{{target}}", instant=True)]),
            timeseries("Latency phases (Thời gian phản hồi)", "s",
                       [Query(f"probe_http_duration_seconds{{{selected}}}", "{{target}} {{phase}}")], stacked=True),
            timeseries("Content age (Thời gian chưa cập nhật)", "s",
                       [Query(f"probe_http_content_age_seconds{{{selected}}}", "{{target}}")]),
            table("Certificate expires in (Chứng thư số)", "s",
                  [Query(f"probe_ssl_earliest_cert_expiry{{{selected}}} - time() {HTTP_TARGETS}", "{{target}}", instant=True)]),
            timeseries("Availability 1 h (SLA)", "percentunit",
                       [Query(f"target:probe_success:avg1h{{{selected}}} {HTTP_TARGETS}", "{{target}} from {{agency}}")]),
            *transaction_panels(),
        ],
    )


def collector_health() -> dict:
    return dashboard(
        "netmon-collector", "Collector health (Bộ thu thập)",
        "The provincial collector: agents up, ingest, rejects, remote_write to the TSDB.",
        [],
        [
            stat("Agents up", "none", [Query("sum(netmon_agent_up)", "up")]),
            stat("Agents down", "none", [Query("count(netmon_agent_up == 0) or vector(0)", "down")],
                 defaults={"thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "red", "value": 1}]}}),
            stat("Series held", "short", [Query("sum(netmon_collector_series)", "series")]),
            stat("Collector scrape", "none", [Query('up{job="netmon-collector", agent=""}', "{{instance}}")],
                 defaults={"mappings": UP_DOWN, "thresholds": RED_BELOW_ONE}),
            timeseries("Ingest rate (samples/s)", "cps",
                       [Query("sum by (mode) (rate(netmon_collector_samples_received_total[$__rate_interval]))", "{{mode}}")]),
            timeseries("Rejected samples by reason", "cps",
                       [Query("sum by (reason) (rate(netmon_collector_samples_rejected_total[$__rate_interval]))", "{{reason}}")]),
            timeseries("Push requests by reply", "reqps",
                       [Query("sum by (code, reason) (rate(netmon_collector_write_requests_total[$__rate_interval]))", "{{code}} {{reason}}")]),
            timeseries("Ingest time p99", "s",
                       [Query("histogram_quantile(0.99, sum by (le) (rate(netmon_collector_ingest_duration_seconds_bucket[$__rate_interval])))", "p99")]),
            timeseries("remote_write queue depth", "short",
                       [Query("netmon_collector_remote_write_queue_pending_samples", "{{remote}}")], width=8),
            timeseries("remote_write oldest unsent", "s",
                       [Query("netmon_collector_remote_write_oldest_unsent_age_seconds", "{{remote}}")], width=8),
            timeseries("remote_write queue on disk", "bytes",
                       [Query("netmon_collector_remote_write_queue_bytes", "{{remote}}")], width=8),
            timeseries("remote_write requests by result", "reqps",
                       [Query("sum by (remote, result) (rate(netmon_collector_remote_write_requests_total[$__rate_interval]))", "{{remote}} {{result}}")]),
            timeseries("remote_write dropped samples", "cps",
                       [Query("sum by (remote, reason) (rate(netmon_collector_remote_write_samples_dropped_total[$__rate_interval]))", "{{remote}} {{reason}}")]),
        ],
    )


DASHBOARDS = {
    "province-overview.json": province_overview,
    "agency-detail.json": agency_detail,
    "mail-system.json": mail_system,
    "network-devices.json": network_devices,
    "portals-services.json": portals,
    "collector-health.json": collector_health,
}


def write_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, build in DASHBOARDS.items():
        path = out_dir / file_name
        path.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
