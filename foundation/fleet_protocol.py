"""The fleet protocol between collector and agent: which agent config sections the collector serves and how
they merge, the config endpoint and its headers, the hash that names a served config on both sides, and the
exchange by which the collector has the agent program check the configs it is about to serve."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

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


# `netmon-agent check-served`: agent id -> every top-level section of the config it is served (identity
# included) as JSON on stdin; agent id -> verdict as JSON on stdout. One run checks every agent of a load.
CHECK_SERVED_COMMAND = "check-served"
_YAML_VALUE = "!yaml"  # a value JSON cannot hold (a YAML date or binary) travels as {"!yaml": its YAML text}


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the agent's loader refuses a served config: the key path in the agent's config, and the reason."""

    path: tuple[str | int, ...]
    message: str


class _Verdict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    ok: bool
    path: tuple[str | int, ...] = ()
    message: str = ""


def encode_check_request(configs: Mapping[str, Mapping[str, Any]]) -> bytes:
    return json.dumps(configs, ensure_ascii=False, default=_yaml_value).encode("utf-8")


def decode_check_request(data: bytes) -> dict[str, dict[str, Any]]:
    """The configs as the agent reads their served YAML (dates stay dates); ValueError if not a request."""
    configs = json.loads(data, object_hook=_from_yaml_value)
    if not isinstance(configs, dict) or not all(isinstance(sections, dict) for sections in configs.values()):
        raise ValueError("expected an object of agent id -> config sections")
    return configs


def encode_check_results(results: Mapping[str, Rejection | None]) -> bytes:
    verdicts = {
        agent: _Verdict(True) if rejection is None else _Verdict(False, rejection.path, rejection.message)
        for agent, rejection in results.items()
    }
    return msgspec.json.encode(verdicts)


def decode_check_results(data: bytes) -> dict[str, Rejection | None]:
    """Agent id -> None (accepted) or the Rejection; ValueError if the data is not such an answer."""
    try:
        verdicts = msgspec.json.decode(data, type=dict[str, _Verdict])
    except msgspec.DecodeError as exc:
        raise ValueError(str(exc)) from None
    return {agent: None if verdict.ok else Rejection(verdict.path, verdict.message) for agent, verdict in verdicts.items()}


def _yaml_value(value: Any) -> dict[str, str]:
    return {_YAML_VALUE: yaml.safe_dump(value)}


def _from_yaml_value(mapping: dict[str, Any]) -> Any:
    if len(mapping) == 1 and isinstance(mapping.get(_YAML_VALUE), str):
        return yaml.safe_load(mapping[_YAML_VALUE])
    return mapping
