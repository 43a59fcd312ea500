"""Config is validated once at load; every error names the file, the line and the key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agents.catalog import load_config, parse_config
from agents.config import ConfigError
from foundation.config.base import ConfigErrors, format_path
from foundation.config.types import Duration

ROOT = Path(__file__).resolve().parent.parent
GOOD_HEAD = """\
agent:
  id: xa-my-tho-01
  agency: xa-my-tho
  name: "UBND xã Mỹ Thọ"
modules:
  tcp_connect:
    prober: tcp
    timeout: 2s
"""


def load_text(tmp_path: Path, text: str) -> object:
    path = tmp_path / "agent.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path)


def config_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return caught.value


def test_example_config_loads_with_vietnamese_name():
    config = load_config(ROOT / "config" / "agent.example.yml")
    assert "Công nghệ thông tin" in config.agent.name
    assert {t.module.prober for t in config.targets} >= {"icmp", "tcp", "dns", "http"}
    assert all(t.name != "gateway" for t in config.targets), "the disabled gateway target is not scheduled"


def test_valid_config_becomes_typed_immutable_objects(tmp_path):
    config = load_text(
        tmp_path,
        GOOD_HEAD
        + """\
targets:
  - name: dc-gateway
    address: 127.0.0.1:22
    module: tcp_connect
    interval: 1m30s
    labels: {site: "trung tâm dữ liệu"}
""",
    )
    target = config.targets[0]
    assert target.interval == 90.0
    assert target.module.timeout == 2.0
    assert dict(target.labels) == {"site": "trung tâm dữ liệu"}
    with pytest.raises(AttributeError):
        target.interval = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "text, line, key, words",
    [
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x:1\n    module: tcp_connect\n    colour: red\n",
                     13, "targets[0].colour", "unknown key", id="unknown-key-in-target"),
        pytest.param(GOOD_HEAD + "listn: 0.0.0.0:1\n", 9, "listn", "unknown key", id="unknown-top-level-key"),
        pytest.param(GOOD_HEAD.replace("prober: tcp", "prober: tcp\n    tcp: {prot: 22}"), 8, "modules.tcp_connect.tcp.prot",
                     "unknown key", id="unknown-key-in-prober-settings"),
        pytest.param(GOOD_HEAD.replace("timeout: 2s", "timeout: 2 seconds"), 8, "modules.tcp_connect.timeout",
                     "invalid duration", id="bad-duration-text"),
        pytest.param(GOOD_HEAD.replace("timeout: 2s", "timeout: 5"), 8, "modules.tcp_connect.timeout",
                     "with a unit", id="duration-without-unit"),
        pytest.param(GOOD_HEAD + "max_concurrent_probes: many\n", 9, "max_concurrent_probes", "Expected `int`",
                     id="wrong-type"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x:1\n    module: tcp_connect\n"
                     "  - name: a\n    address: y:1\n    module: tcp_connect\n", 13, "targets[1].name",
                     "duplicate target name 'a'", id="duplicate-target-name"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x:1\n    module: http_2xx\n", 12,
                     "targets[0].module", "unknown module 'http_2xx'", id="unknown-module"),
        pytest.param(GOOD_HEAD.replace("prober: tcp", "prober: telnet"), 7, "modules.tcp_connect.prober",
                     "unknown prober 'telnet'", id="unknown-prober"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    module: tcp_connect\n", 10, "targets[0]",
                     "missing required key 'address'", id="missing-required-key"),
        pytest.param(GOOD_HEAD.replace("  agency: xa-my-tho\n", ""), 1, "agent", "missing required key 'agency'",
                     id="missing-agency"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x:1\n    module: tcp_connect\n    interval: 1s\n",
                     13, "targets[0].interval", "(module 'tcp_connect') is longer than the interval", id="interval-shorter-than-timeout"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x:1\n    module: tcp_connect\n    labels: {target: b}\n",
                     13, "targets[0].labels.target", "reserved", id="reserved-label"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x:1\n    module: tcp_connect\n    labels: {2bad: b}\n",
                     13, "targets[0].labels.2bad", "invalid label name", id="invalid-label-name"),
        pytest.param(GOOD_HEAD + "listen: nowhere\n", 9, "listen", "HOST:PORT", id="bad-listen-address"),
        pytest.param(GOOD_HEAD.replace("timeout: 2s", "timeout: 2s\n    preferred_ip_protocol: IPv4"), 9,
                     "modules.tcp_connect.preferred_ip_protocol", "invalid value 'IPv4'; expected one of: ip4, ip6",
                     id="enum-value-lists-the-valid-ones"),
        pytest.param(GOOD_HEAD.replace("  id: xa-my-tho-01\n", "  id: xa-my-tho-01\n  id: again\n"), 3, "agent.id",
                     "duplicate key 'id'", id="duplicate-yaml-key"),
        pytest.param(GOOD_HEAD + "targets: [\n", 10, "", "YAML syntax error", id="yaml-syntax"),
        pytest.param(GOOD_HEAD.replace("prober: tcp", "prober: tcp\n    tcp: {query_response: [{expect: '(['}]}"), 8,
                     "modules.tcp_connect.tcp.query_response", "invalid regex", id="bad-regex"),
        pytest.param(GOOD_HEAD.replace("prober: tcp", "prober: tcp\n    tcp: {tls_config: {ca_file: /nonexistent/ca.pem}}"),
                     8, "modules.tcp_connect.tcp.tls_config.ca_file", "does not exist", id="missing-ca-file"),
    ],
)
def test_bad_config_is_rejected_with_file_line_and_key(tmp_path, text, line, key, words):
    error = config_error(tmp_path, text)
    message = str(error)
    assert message.startswith(f"{tmp_path / 'agent.yml'}:{line}: "), message
    assert key in message, message
    assert words in message, message
    assert error.line == line


def test_unreadable_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yml")


def test_file_that_is_not_utf8_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yml"
    path.write_bytes("agent: {id: a, agency: b, name: 'x\xe3 M\xfd'}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("15s", 15), ("2m", 120), ("1h30m", 5400), ("1.5s", 1.5),
                                           ("2d", 172800), ("1w", 604800), ("1y", 31536000)])
def test_durations_parse_prometheus_style(text, seconds):
    assert Duration.parse(text) == pytest.approx(seconds)


def test_a_bad_duration_names_every_unit_accepted():
    with pytest.raises(ValueError, match=r"use a number with a unit ms, s, m, h, d, w, y, e\.g\. '15s'"):
        Duration.parse("5 min")


def test_disabled_target_is_validated_but_not_scheduled(tmp_path):
    config = load_text(tmp_path, GOOD_HEAD + "targets:\n  - {name: a, address: x:1, module: tcp_connect, enabled: false}\n")
    assert config.targets == ()


def test_agent_labels_reach_every_target_and_target_labels_win(tmp_path):
    text = GOOD_HEAD.replace('  name: "UBND xã Mỹ Thọ"\n', '  name: "UBND xã Mỹ Thọ"\n  labels: {district: cai-be, level: commune}\n')
    config = load_text(tmp_path, text + "targets:\n  - {name: a, address: x:1, module: tcp_connect, labels: {level: override}}\n")
    assert dict(config.targets[0].labels) == {"district": "cai-be", "level": "override"}


def test_parse_config_names_the_given_source():
    with pytest.raises(ConfigError, match=r"^inline\.yml:1: "):
        parse_config("- a list, not a mapping\n", "inline.yml")


# --- every problem of the file in one run ------------------------------------------------------------------------

MANY_PROBLEMS = GOOD_HEAD + """\
  web:
    prober: http
    timeout: 5
  dns_mx:
    prober: dns
    dns: {resolver: 10.0.0.53, query_typ: MX}
listn: 0.0.0.0:1
targets:
  - {name: portal, address: "https://portal.example", module: web}
  - {name: a, address: "x:1", module: tcp_connect, colour: red}
  - {name: b, address: "x:1", module: nope}
  - {name: c, address: "x:1", module: tcp_connect, interval: 1s}
ssh_hosts:
  mail: {address: 10.0.0.25, user: netmon, key_file: /k}
ssh_checks:
  - {name: queue, host: mail, command: mailq}
  - {name: disk, host: nowhere, command: df}
"""


def test_every_problem_of_the_file_is_reported_at_once_sorted_by_line(tmp_path):
    error = config_error(tmp_path, MANY_PROBLEMS)
    lines = str(error).splitlines()
    expected = [
        (11, "modules.web.timeout", "with a unit"),
        (14, "modules.dns_mx.dns.query_typ", "unknown key"),
        (15, "listn", "unknown key"),
        (18, "targets[1].colour", "unknown key"),
        (19, "targets[2].module", "unknown module 'nope'"),
        (20, "targets[3].interval", "is longer than the interval"),
        (22, "ssh_hosts.mail", "set exactly one of known_hosts and host_key_fingerprint"),
        (25, "ssh_checks[1].host", "unknown ssh host 'nowhere'"),
    ]
    assert len(lines) == len(expected), lines
    for text, (line, key, words) in zip(lines, expected):
        assert text.startswith(f"{tmp_path / 'agent.yml'}:{line}: {key}: ") and words in text, text
    assert [one.line for one in error.each()] == [line for line, _, _ in expected]
    assert (error.line, error.path) == (11, ("modules", "web", "timeout")), "a ConfigError's own fields: the first"


def test_what_refers_to_an_entry_that_failed_is_not_reported_again(tmp_path):
    """A module, ssh host or snmp auth that failed to load is reported once; its users are not "unknown"."""
    error = config_error(tmp_path, GOOD_HEAD + """\
  web: {prober: http, timeout: 5}
targets:
  - {name: portal, address: "https://portal.example", module: web}
ssh_hosts:
  mail: {address: 10.0.0.25, user: netmon, key_file: /k, port: 0, known_hosts: /kh}
ssh_checks:
  - {name: queue, host: mail, command: mailq}
snmp_auths:
  lan: {version: 2d, community: "${COMMUNITY}"}
snmp_devices:
  - {name: switch, address: 10.0.0.2, auth: lan}
""")
    assert [format_path(one.path) for one in error.each()] == ["modules.web.timeout", "ssh_hosts.mail.port", "snmp_auths.lan.version"]


def test_an_entry_that_did_not_decode_keeps_the_others_at_their_own_lines(tmp_path):
    error = config_error(tmp_path, GOOD_HEAD + """\
targets:
  - {name: a, address: "x:1", module: tcp_connect, interval: 5}
  - {name: b, address: "x:1", module: tcp_connect}
  - {name: c, address: "x:1", module: missing}
""")
    assert [(one.line, format_path(one.path)) for one in error.each()] == [(10, "targets[0].interval"), (12, "targets[2].module")]


def test_a_failed_defaults_section_stops_before_checks_that_depend_on_it(tmp_path):
    """With `defaults` unreadable, every target's interval would be judged against a default the user did not
    write: only what failed to decode is reported."""
    error = config_error(tmp_path, GOOD_HEAD + """\
defaults: {interval: 30, timeout: 1s}
targets:
  - {name: a, address: "x:1", module: tcp_connect, colour: red}
  - {name: b, address: "x:1", module: tcp_connect, interval: 1s}
""")
    assert [format_path(one.path) for one in error.each()] == ["defaults.interval", "targets[0].colour"]


def test_one_problem_is_a_plain_config_error_and_many_are_still_one(tmp_path):
    one = config_error(tmp_path, GOOD_HEAD + "listn: x\n")
    assert type(one) is ConfigError and one.each() == (one,)
    many = config_error(tmp_path, GOOD_HEAD + "listn: x\nlistenn: y\n")
    assert isinstance(many, ConfigErrors) and isinstance(many, ConfigError) and len(many.each()) == 2


def test_an_unquoted_secret_reference_in_a_flow_mapping_says_to_quote_it(tmp_path):
    """`{password: ${WEB_PASS}}` is a YAML syntax error (the `{` opens a mapping); the error says what to write."""
    error = config_error(tmp_path, GOOD_HEAD + "  web: {prober: http, http: {basic_auth: {username: u, password: ${WEB_PASS}}}}\n")
    assert str(error) == (
        f"{tmp_path / 'agent.yml'}:9: YAML syntax error: expected ',' or '}}', but got '{{'; "
        "a reference inside { } or [ ] must be quoted: '${WEB_PASS}'"
    )


def test_other_yaml_syntax_errors_get_no_quoting_hint(tmp_path):
    assert "quoted" not in str(config_error(tmp_path, GOOD_HEAD + "  web: {prober: http, http: {a: {b}}\n"))


def test_with_a_served_config_each_problem_points_at_its_own_file_and_line(tmp_path, monkeypatch):
    from agents.fleet import Served, load_agent_config
    from foundation.fleet_protocol import config_hash

    monkeypatch.setenv("FLEET_TOKEN", "fleet-token-value")
    path = tmp_path / "agent.yml"
    path.write_text(GOOD_HEAD.replace("prober: tcp", "prober: tcp\n    colour: red") + (
        f"fleet: {{url: 'http://127.0.0.1:9', bearer_token: '${{FLEET_TOKEN}}', cache_file: '{tmp_path / 'served.yml'}'}}\n"
        "targets:\n  - {name: local, address: 'x:1', module: tcp_connect}\n"), encoding="utf-8")
    text = "targets:\n  - {name: ok, address: 'y:1', module: tcp_connect}\n  - {name: bad, address: 'y:1', module: nope}\n"
    with pytest.raises(ConfigError) as caught:
        load_agent_config(str(path), Served(text, config_hash(text), "collector"))
    assert str(caught.value).splitlines() == [
        f"{path}:8: modules.tcp_connect.colour: unknown key (check spelling and indentation)",
        f"served config {config_hash(text)}:3: targets[1].module: unknown module 'nope'; modules: tcp_connect",
    ]
