"""Fleet management, collector side, at run time: the config endpoint that serves each agent its rendered config
(collector/templates.py renders them at load), and what each agent reports when it fetches (docs/fleet.md).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector

from collector.config_model import CollectorConfig, Fleet, InventoryAgent, ServedConfig
from foundation.fleet_protocol import HASH_HEADER, VERSION_HEADER
from foundation.httpserver import Request, Response

CONFIG_PREFIX, CONFIG_SUFFIX = "/api/v1/agents/", "/config"


def config_path(agent_id: str) -> str:
    return f"{CONFIG_PREFIX}{agent_id}{CONFIG_SUFFIX}"


def serve_config(fleet: Fleet, fetches: FetchLog, request: Request) -> Response:
    """GET (or HEAD) /api/v1/agents/<id>/config: 401 without a known credential, whatever id the path names (the
    path is read only once the credential is known, so ids cannot be probed); 403 for another agent's id, known or
    not; 304 when If-None-Match matches the served ETag, else 200 with the YAML."""
    agent = authenticated_agent(fleet, request.headers.get("authorization"))
    if agent is None:
        note = f"; {fleet.unknown_token_note}" if fleet.unknown_token_note else ""
        return Response.text(401, f"unauthorized: missing or unknown bearer token{note}\n", **{"WWW-Authenticate": 'Bearer realm="netmon-collector"'})
    wanted = requested_agent(request.path)
    if wanted is None:
        return Response.text(404, f"no such path; agents fetch {config_path(agent.id)}\n")
    if wanted != agent.id:
        return Response.text(403, f"forbidden: agent {agent.id} may fetch only its own config\n")
    served = fleet.configs.get(agent.id)
    if served is None:
        return Response.text(404, f"no config for agent {agent.id}\n")
    fetches.record(agent.id, request.headers)
    headers = {"ETag": served.etag, "Cache-Control": "no-cache", HASH_HEADER: served.hash}
    if none_match(request.headers.get("if-none-match"), served.etag):
        return Response(304, b"", headers=headers)
    return Response(200, served.text.encode("utf-8"), "application/yaml; charset=utf-8", headers)


def authenticated_agent(fleet: Fleet, authorization: str | None) -> InventoryAgent | None:
    """The agent a bearer token belongs to. Every request costs the same: the digest of whatever came (empty if
    nothing) and one lookup of it."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    agent = fleet.tokens.get(hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest())  # as collector.config.token_digest
    return agent if scheme.lower() == "bearer" and token else None


def requested_agent(path: str) -> str | None:
    """The <id> of /api/v1/agents/<id>/config; None for any other path."""
    if not path.startswith(CONFIG_PREFIX) or not path.endswith(CONFIG_SUFFIX):
        return None
    agent_id = path[len(CONFIG_PREFIX):-len(CONFIG_SUFFIX)]
    return agent_id if agent_id and "/" not in agent_id else None


def none_match(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match by weak comparison, as RFC 9110 13.1.2 says for GET: W/"x" matches "x", and * matches (an
    authenticated agent always has a config)."""
    tags = [tag.strip().removeprefix("W/") for tag in (if_none_match or "").split(",")]
    return "*" in tags or etag.removeprefix("W/") in tags


@dataclass(slots=True)
class FetchRecord:
    """What an agent told the collector on its last config fetch."""

    time: float = 0.0  # unix seconds of the agent's last fetch; 0: never
    applied_hash: str = ""  # the served config the agent runs (from its X-Netmon-Config-Hash header)
    version: str = ""  # the agent's build version


class FetchLog:
    """Per agent, the last fetch. Runtime state: it outlives reloads (entries of removed agents are ignored)."""

    def __init__(self) -> None:
        self.records: dict[str, FetchRecord] = {}

    def record(self, agent_id: str, headers: Mapping[str, str]) -> None:
        """Only a fetch that reports the agent's state (every agent fetch sends its version, and the hash of the
        served config it runs if any) changes the record: a fetch by hand leaves what the agent reported."""
        applied_hash, version = headers.get(HASH_HEADER.lower()), headers.get(VERSION_HEADER.lower())
        if applied_hash is None and version is None:
            return
        record = self.records.setdefault(agent_id, FetchRecord())
        record.time = time.time()
        record.applied_hash = (applied_hash or "")[:64]
        record.version = (version or "")[:64]

    def get(self, agent_id: str) -> FetchRecord:
        return self.records.get(agent_id) or FetchRecord()


def under_management(served: ServedConfig, record: FetchRecord) -> bool:
    """Templates select the agent, or it fetches: only these agents are shown (a collector without templates adds nothing)."""
    return bool(served.templates) or record.time > 0


class FleetCollector(Collector):
    """Per inventory agent: the served hash, what the agent last reported (hash, version) and when it fetched."""

    def __init__(self, config: Callable[[], CollectorConfig], fetches: FetchLog) -> None:
        self._config = config
        self._fetches = fetches

    def collect(self) -> Iterator[Family]:
        identity = ["agency", "agent", "district", "level"]
        served = GaugeMetricFamily("netmon_fleet_config_served_info", "Hash of the config the collector serves to the agent", labels=identity + ["hash"])
        applied = GaugeMetricFamily(
            "netmon_fleet_config_applied_info", "Hash of the served config the agent reported running at its last fetch, and its version",
            labels=identity + ["hash", "version"],
        )
        current = GaugeMetricFamily("netmon_fleet_config_up_to_date", "1 if the agent's last fetch reported the config it is served now", labels=identity)
        last = GaugeMetricFamily("netmon_fleet_last_fetch_timestamp_seconds", "When the agent last fetched its config (0: never)", labels=identity)
        config = self._config()
        for agent in config.agents:
            labels = [value for _, value in agent.identity]
            served_config = config.fleet.configs.get(agent.id)
            record = self._fetches.get(agent.id)
            if served_config is None or not under_management(served_config, record):
                continue
            served.add_metric(labels + [served_config.hash], 1.0)
            if record.time:
                applied.add_metric(labels + [record.applied_hash, record.version], 1.0)
            current.add_metric(labels, 1.0 if record.applied_hash == served_config.hash else 0.0)
            last.add_metric(labels, record.time)
        yield from (served, applied, current, last)

