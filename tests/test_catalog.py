"""The catalog binds the loader to the probers and domains: sections registered by domains are decoded and
checked like the agent's own keys, failure reasons form one bounded set, and agents.config imports no domain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from agents.catalog import PROBERS, SECTIONS, failure_reasons, parse_config
from agents.config import ConfigError
from agents.config.loader import AgentConfigSchema
from agents.config.model import ModuleConfig, Target
from agents.config.sections import SectionContext, SectionSpec
from agents.results import Failure, Reason

ROOT = Path(__file__).resolve().parent.parent
AGENT = "agent: {id: a, agency: b}\n"
SSH_HOST = "ssh_hosts:\n  db: {address: 192.0.2.5, user: u, key_file: /k, host_key_fingerprint: 'SHA256:" + "A" * 43 + "'}\n"

# the label values of probe_failure_info{reason} (docs/metrics.md): dashboards and alerts match these strings
REASONS = (
    "timeout", "resolve_failed", "network_unreachable", "host_unreachable", "connect_refused", "connect_failed",
    "connection_reset", "permission_denied", "tls_handshake", "tls_verify", "tls_version", "expect_mismatch",
    "protocol_error", "auth_failed", "internal_error", "packet_loss", "port_open", "dns_rcode",
    "dns_answer_mismatch", "dns_no_answer", "http_status", "http_body_mismatch", "http_too_many_redirects",
    "http_content_too_old", "auth_unsupported", "bad_banner", "no_starttls", "mail_rejected", "not_delivered",
    "host_key_unknown", "host_key_changed", "command_failed", "parse_error", "unknown_user", "not_in_time_window",
    "too_big", "no_such_name", "decode_error", "assertion_failed", "extract_failed", "soap_fault",
)


# --- failure reasons --------------------------------------------------------------------------------------------


def test_failure_reasons_of_all_probers_are_the_documented_bounded_set():
    assert sorted(failure_reasons()) == sorted(REASONS)


def test_every_failure_reason_is_listed_in_the_metrics_docs_or_its_probers_page():
    docs = "\n".join(page.read_text(encoding="utf-8") for page in (ROOT / "docs").glob("*.md"))
    assert [reason for reason in failure_reasons() if f"`{reason}`" not in docs] == []


def test_a_domain_cannot_declare_a_reason_its_base_set_already_has():
    with pytest.raises(TypeError, match="'timeout' is already declared"):
        type("Clash", (Failure,), {"SLOW": Reason("timeout")})


def test_a_domain_set_holds_the_common_reasons_as_the_same_objects():
    from agents.ssh.failures import SshFailure

    assert SshFailure.TIMEOUT is Failure.TIMEOUT
    assert SshFailure.HOST_KEY_UNKNOWN.value == "host_key_unknown"


# --- sections registered by domains -----------------------------------------------------------------------------


class PingSections(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    ping_hosts: list[str] = []  # a toy domain: one tcp target per host


def expand_pings(keys: PingSections, context: SectionContext) -> list[Target]:
    targets = []
    for index, host in enumerate(keys.ping_hosts):
        context.claim_name(host, ("ping_hosts", index))
        module = ModuleConfig("ping", "tcp", context.timeout(None), "ip4", True, PROBERS["tcp"].settings())
        targets.append(context.target(host, f"{host}:7", module, context.interval(None), {}))
    return targets


PING_SCHEMA = AgentConfigSchema([PROBERS["tcp"]], [SectionSpec(PingSections, expand_pings)])


def test_a_registered_section_is_expanded_into_targets_with_the_agents_labels():
    config = PING_SCHEMA.parse(AGENT.replace("}", ", labels: {site: hq}}") + "ping_hosts: [gw, dns]\n")
    assert [(t.name, t.address, t.labels) for t in config.targets] == [("gw", "gw:7", (("site", "hq"),)),
                                                                        ("dns", "dns:7", (("site", "hq"),))]
    assert config.section(PingSections) == PingSections(ping_hosts=["gw", "dns"])


def test_a_registered_sections_type_errors_keep_file_line_and_key():
    with pytest.raises(ConfigError) as error:
        PING_SCHEMA.parse(AGENT + "ping_hosts: [gw, {a: 1}]\n", "agent.yml")
    assert str(error.value) == "agent.yml:2: ping_hosts[1]: Expected `str`, got `object`"


def test_a_key_the_table_does_not_register_is_unknown():
    with pytest.raises(ConfigError, match=r"x.yml:2: ping_hosts: unknown key"):
        AgentConfigSchema([PROBERS["tcp"]], []).parse(AGENT + "ping_hosts: [gw]\n", "x.yml")


def test_a_section_may_not_take_a_key_already_taken():
    class Clash(msgspec.Struct, kw_only=True):
        targets: list[str] = []

    with pytest.raises(TypeError, match="'targets' is already taken"):
        AgentConfigSchema([], [SectionSpec(Clash, lambda keys, context: [])])


def test_target_names_are_unique_across_sections_naming_where_the_first_is(monkeypatch):
    monkeypatch.setenv("COMMUNITY", "public")
    with pytest.raises(ConfigError, match=r"ssh_checks\[0\]\.name: duplicate target name 'x' \(first defined in targets\[0\]\)"):
        parse_config(AGENT + "modules: {t: {prober: tcp}}\ntargets: [{name: x, address: 'h:1', module: t}]\n" + SSH_HOST
                     + "ssh_checks: [{name: x, host: db, command: df}]\n")
    with pytest.raises(ConfigError, match=r"snmp_devices\[0\]\.name: duplicate target name 'x' \(first defined in ssh_checks\[0\]\)"):
        parse_config(AGENT + SSH_HOST + "ssh_checks: [{name: x, host: db, command: df}]\n"
                     + "snmp_auths: {c: {community: '${COMMUNITY}'}}\nsnmp_devices: [{name: x, address: 192.0.2.1, auth: c}]\n")


def test_the_catalog_registers_the_ssh_snmp_path_and_host_sections():
    keys = {name for section in SECTIONS for name in section.keys.__struct_fields__}
    assert keys == {"ssh_hosts", "ssh_checks", "snmp_auths", "snmp_profiles", "snmp_devices", "snmp_max_concurrent_polls",
                    "path_triggers", "host"}


# --- layers -----------------------------------------------------------------------------------------------------


def test_the_config_package_imports_no_prober_and_no_domain():
    script = (
        "import sys\n"
        "import agents.config, agents.config.loader, agents.config.sections\n"
        "print(sorted(m for m in sys.modules if m.startswith(('agents.probes', 'agents.ssh', 'agents.snmp', "
        "'agents.host', 'agents.net', 'agents.catalog'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
