"""The agent's catalog: every prober (with the config keys and failure reasons it owns) and every other domain
that owns config keys, and the config entry points bound to them.

This module sits above the probers and domains and imports them all; nothing below imports it. Adding a
prober is one file (or one folder) with its `SPEC`, one line in PROBERS and one test file (docs/design.md).
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Any

from agents import host
from agents.config.loader import AgentConfigSchema
from agents.config.model import AgentConfig
from agents.config.sections import SectionSpec
from agents.path import probe as path
from agents.probes import dns, http, icmp, imap, mail_roundtrip, pop3, smtp, tcp, transaction
from agents.probes.base import ProberSpec
from agents.results import Failure
from agents.snmp import probe as snmp
from agents.ssh import probe as ssh
from foundation.config.base import ConfigContext

PROBERS: dict[str, ProberSpec[Any]] = {
    spec.name: spec
    for spec in (
        icmp.SPEC,
        tcp.SPEC,
        dns.SPEC,
        http.SPEC,
        transaction.SPEC,
        smtp.SPEC,
        imap.SPEC,
        pop3.SPEC,
        mail_roundtrip.SPEC,
        ssh.SPEC,
        snmp.SPEC,
        path.SPEC,
    )
}

# top-level keys of domains with no prober of their own
OTHER_SECTIONS: tuple[SectionSpec[Any], ...] = (host.SECTION,)

SECTIONS: tuple[SectionSpec[Any], ...] = (
    *(spec.section for spec in PROBERS.values() if spec.section is not None),
    *OTHER_SECTIONS,
)

SCHEMA = AgentConfigSchema(PROBERS.values(), SECTIONS)


def load_config(path: str | FsPath) -> AgentConfig:
    return SCHEMA.load(path)


def parse_config(text: str, file: str = "<config>") -> AgentConfig:
    return SCHEMA.parse(text, file)


def config_from_sections(ctx: ConfigContext, sections: dict[str, Any]) -> AgentConfig:
    """The typed config of already-parsed top-level sections (e.g. a local file merged with a served one)."""
    return SCHEMA.from_sections(ctx, sections)


def failure_reasons() -> tuple[str, ...]:
    """Every value the label `reason` can take (besides "none"): the bounded set docs/metrics.md lists."""
    declared = Failure.declared() + tuple(reason for spec in PROBERS.values() for reason in spec.failures.declared())
    return tuple(dict.fromkeys(str(reason) for reason in declared))
