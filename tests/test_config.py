"""Config is validated once at load; every error names the file, the line and the key path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agents.catalog import load_config, parse_config
from agents.config import ConfigError
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
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x\n    module: tcp_connect\n    colour: red\n",
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
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x\n    module: tcp_connect\n"
                     "  - name: a\n    address: y\n    module: tcp_connect\n", 13, "targets[1].name",
                     "duplicate target name 'a'", id="duplicate-target-name"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x\n    module: http_2xx\n", 12,
                     "targets[0].module", "unknown module 'http_2xx'", id="unknown-module"),
        pytest.param(GOOD_HEAD.replace("prober: tcp", "prober: telnet"), 7, "modules.tcp_connect.prober",
                     "unknown prober 'telnet'", id="unknown-prober"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    module: tcp_connect\n", 10, "targets[0]",
                     "missing required key 'address'", id="missing-required-key"),
        pytest.param(GOOD_HEAD.replace("  agency: xa-my-tho\n", ""), 1, "agent", "missing required key 'agency'",
                     id="missing-agency"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x\n    module: tcp_connect\n    interval: 1s\n",
                     13, "targets[0].interval", "(module 'tcp_connect') is longer than the interval", id="interval-shorter-than-timeout"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x\n    module: tcp_connect\n    labels: {target: b}\n",
                     13, "targets[0].labels.target", "reserved", id="reserved-label"),
        pytest.param(GOOD_HEAD + "targets:\n  - name: a\n    address: x\n    module: tcp_connect\n    labels: {2bad: b}\n",
                     13, "targets[0].labels.2bad", "invalid label name", id="invalid-label-name"),
        pytest.param(GOOD_HEAD + "listen: nowhere\n", 9, "listen", "HOST:PORT", id="bad-listen-address"),
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


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("15s", 15), ("2m", 120), ("1h30m", 5400), ("1.5s", 1.5)])
def test_durations_parse_prometheus_style(text, seconds):
    assert Duration.parse(text) == pytest.approx(seconds)


def test_disabled_target_is_validated_but_not_scheduled(tmp_path):
    config = load_text(tmp_path, GOOD_HEAD + "targets:\n  - {name: a, address: x, module: tcp_connect, enabled: false}\n")
    assert config.targets == ()


def test_agent_labels_reach_every_target_and_target_labels_win(tmp_path):
    text = GOOD_HEAD.replace('  name: "UBND xã Mỹ Thọ"\n', '  name: "UBND xã Mỹ Thọ"\n  labels: {district: cai-be, level: commune}\n')
    config = load_text(tmp_path, text + "targets:\n  - {name: a, address: x, module: tcp_connect, labels: {level: override}}\n")
    assert dict(config.targets[0].labels) == {"district": "cai-be", "level": "override"}


def test_parse_config_names_the_given_source():
    with pytest.raises(ConfigError, match=r"^inline\.yml:1: "):
        parse_config("- a list, not a mapping\n", "inline.yml")
