"""The fleet protocol between collector and agent: which agent config sections the collector serves and how
they merge, the config endpoint and its headers, and the hash that names a served config on both sides."""

from __future__ import annotations

import hashlib

KEYED_SECTIONS = ("modules", "ssh_hosts", "snmp_auths", "snmp_profiles")  # merged by key
NAMED_SECTIONS = ("targets", "ssh_checks", "snmp_devices")  # lists merged by each entry's `name`
WHOLE_SECTIONS = ("host",)  # the local section, if present, replaces the served one
SERVED_SECTIONS = KEYED_SECTIONS + NAMED_SECTIONS + WHOLE_SECTIONS

CONFIG_PATH = "/api/v1/agents/{agent}/config"
HASH_HEADER = "X-Netmon-Config-Hash"  # the served config this agent runs, sent with every fetch
VERSION_HEADER = "X-Netmon-Agent-Version"


def config_hash(text: str) -> str:
    """The identity of a served config: the collector's ETag and the `hash` label on both sides."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
