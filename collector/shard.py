"""Shards of one inventory: `netmon-collector shard` splits a collector config into N collector configs so that
every agency (with all its agents) is in exactly one shard (docs/deployment.md, "Sharding").

- `--by hash`: rendezvous (highest random weight) hashing of the agency id over the shard names: an agency goes
  to the shard whose sha256(shard name, agency id) is highest. Stable across runs and machines, and going from N
  to N+1 shards moves only the agencies the new shard wins, ~1/(N+1) of them; none moves between old shards.
- `--by district`: whole districts, packed largest first onto the shard with the fewest agents so far (ties by
  shard order). Stable under re-run; adding a shard may move any district.

Each shard config is the inventory's with its own agencies, agents, districts and the templates that select any
of them; `external_labels` gains `shard: <name>` (shards are not replicas: their series differ, see the HA
section of docs/deployment.md); every `remote_write` goes to the same TSDB, each shard with its own queue
directory. The shard map (which agent pushes where) and a Prometheus scrape job listing every shard go beside.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from collector.config import load_collector_config, parse_collector_config
from collector.config_model import CollectorConfig
from foundation.config.base import ConfigContext, read_config_file, yaml_sections

SHARD_LABEL = "shard"
Strategy = Literal["hash", "district"]
SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass(frozen=True, slots=True)
class Shard:
    name: str
    url: str  # the base URL its agents push to and fetch their config from
    agencies: tuple[str, ...]  # agency ids, in inventory order


def shard_names(count: int) -> list[str]:
    return [f"shard-{number}" for number in range(1, count + 1)]


def rendezvous_owner(agency: str, names: Sequence[str]) -> str:
    """The shard of highest weight for this agency: adding a shard takes only the agencies it wins."""
    return max(names, key=lambda name: hashlib.sha256(f"{name}\0{agency}".encode()).digest())


def by_hash(agencies: Iterable[str], names: Sequence[str]) -> dict[str, list[str]]:
    owned: dict[str, list[str]] = {name: [] for name in names}
    for agency in agencies:
        owned[rendezvous_owner(agency, names)].append(agency)
    return owned


def by_district(agency_districts: Mapping[str, str], agent_counts: Mapping[str, int], names: Sequence[str]) -> dict[str, list[str]]:
    """Whole districts, heaviest (most agents) first, each onto the lightest shard so far."""
    weight: dict[str, int] = {}
    for agency, district in agency_districts.items():
        weight[district] = weight.get(district, 0) + max(agent_counts.get(agency, 0), 1)
    load = {name: 0 for name in names}
    home: dict[str, str] = {}
    for district in sorted(weight, key=lambda d: (-weight[d], d)):
        lightest = min(names, key=lambda name: (load[name], names.index(name)))
        home[district] = lightest
        load[lightest] += weight[district]
    owned: dict[str, list[str]] = {name: [] for name in names}
    for agency, district in agency_districts.items():
        owned[home[district]].append(agency)
    return owned


def plan_shards(config: CollectorConfig, count: int, strategy: Strategy, urls: Sequence[str]) -> list[Shard]:
    names = shard_names(count)
    agency_ids = [agency.id for agency in config.agencies]
    if strategy == "hash":
        owned = by_hash(agency_ids, names)
    else:
        agent_counts: dict[str, int] = {}
        for agent in config.agents:
            agent_counts[agent.agency.id] = agent_counts.get(agent.agency.id, 0) + 1
        owned = by_district({agency.id: agency.district for agency in config.agencies}, agent_counts, names)
    return [Shard(name, url, tuple(owned[name])) for name, url in zip(names, urls)]


def default_urls(config: CollectorConfig, count: int) -> list[str]:
    """http(s)://shard-N:PORT: one host per shard named after it, on the inventory's port."""
    scheme = "https" if config.tls is not None else "http"
    return [f"{scheme}://{name}:{config.listen_port}" for name in shard_names(count)]


def check_plan_request(config: CollectorConfig, count: int, strategy: Strategy, urls: Sequence[str]) -> None:
    """ValueError (said to the operator as is) for a request the inventory cannot satisfy."""
    if count < 1:
        raise ValueError("--shards must be at least 1")
    if len(urls) != count:
        raise ValueError(f"{len(urls)} --url given for {count} shards: give one per shard, in order, or none")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url {url!r}: expected http(s)://HOST[:PORT]")
    districts = {agency.district for agency in config.agencies}
    if strategy == "district" and len(districts) < count:
        raise ValueError(f"{count} shards but the inventory has only {len(districts)} districts: use fewer shards or --by hash")


def check_inventory_for_sharding(ctx: ConfigContext, raw: dict[str, Any]) -> None:
    """The shard label and section are the command's to set: one already there names its line."""
    if "shard" in raw:
        raise ctx.error(("shard",), "this is already a shard's config: shard the inventory it was generated from")
    if SHARD_LABEL in (raw.get("external_labels") or {}):
        raise ctx.error(("external_labels", SHARD_LABEL), f"the label {SHARD_LABEL!r} is set per shard by `netmon-collector shard`; remove it here")


def shard_sections(raw: dict[str, Any], shard: Shard, shards: Sequence[Shard], strategy: Strategy, listen_host: str) -> dict[str, Any]:
    """The inventory's sections cut down to one shard's agencies, labelled and listening as that shard."""
    mine = set(shard.agencies)
    agencies = [entry for entry in raw.get("agencies") or [] if entry["id"] in mine]
    districts = {entry["district"] for entry in agencies}
    sections = dict(raw)
    sections["agencies"] = agencies
    sections["agents"] = [entry for entry in raw.get("agents") or [] if entry["agency"] in mine]
    if "districts" in raw:
        sections["districts"] = [entry for entry in raw["districts"] if entry["id"] in districts]
    if "templates" in raw:
        sections["templates"] = [t for t in (_template_for(t, mine, districts) for t in raw["templates"]) if t is not None]
    sections["external_labels"] = {**(raw.get("external_labels") or {}), SHARD_LABEL: shard.name}
    sections["listen"] = _listen(listen_host, shard.url)
    sections["shard"] = {"name": shard.name, "by": strategy, "shards": [{"name": one.name, "url": one.url} for one in shards]}
    if "remote_write" in raw:
        sections["remote_write"] = [_own_queue(out, shard.name) for out in raw["remote_write"]]
    return sections


def _template_for(template: dict[str, Any], agencies: set[str], districts: set[str]) -> dict[str, Any] | None:
    """The template with its selector's agency and district lists cut to this shard; None when a list it gave
    names nothing here (an empty list would select every agency)."""
    select = dict(template.get("select") or {})
    for key, present in (("agencies", agencies), ("districts", districts)):
        if select.get(key):
            select[key] = [value for value in select[key] if value in present]
            if not select[key]:
                return None
    return {**template, "select": select} if "select" in template else template


def _listen(host: str, url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _own_queue(out: dict[str, Any], shard: str) -> dict[str, Any]:
    """Shards on one host must not share a durable queue: each gets a directory of its own under the inventory's."""
    queue = dict(out.get("queue") or {})
    if "directory" in queue:
        queue["directory"] = str(FsPath(queue["directory"]) / shard)
    return {**out, "queue": queue}


def shard_map(shards: Sequence[Shard], config: CollectorConfig, strategy: Strategy) -> dict[str, Any]:
    """Which agent pushes where: what each agent's `push.url` and `fleet.url` must say."""
    agents_of: dict[str, list[str]] = {}
    for agent in config.agents:
        agents_of.setdefault(agent.agency.id, []).append(agent.id)
    return {
        "by": strategy,
        "shards": [
            {
                "name": shard.name, "url": shard.url, "push_url": f"{shard.url}/api/v1/write", "config": f"{shard.name}.yml",
                "agencies": list(shard.agencies), "agents": [agent for agency in shard.agencies for agent in agents_of.get(agency, [])],
            }
            for shard in shards
        ],
    }


def scrape_config(shards: Sequence[Shard]) -> dict[str, Any]:
    """A Prometheus scrape job over every shard (liveness comes from each shard's /metrics), each target labelled
    with its shard; the job name is the one NetmonCollectorDown matches."""
    targets = []
    for shard in shards:
        parts = urlsplit(shard.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        targets.append({"targets": [f"{parts.hostname}:{port}"], "labels": {SHARD_LABEL: shard.name}})
    job: dict[str, Any] = {"job_name": "netmon-collector", "honor_labels": True, "scrape_interval": "15s", "scrape_timeout": "10s"}
    if any(urlsplit(shard.url).scheme == "https" for shard in shards):
        job["scheme"] = "https"
    job["static_configs"] = targets
    return {"scrape_configs": [job]}


def dump(data: Any, header: str) -> str:
    body = yaml.dump(data, Dumper=SafeDumper, allow_unicode=True, sort_keys=False, default_flow_style=False, width=160)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


@dataclass(frozen=True, slots=True)
class Written:
    shards: tuple[Shard, ...]
    files: tuple[FsPath, ...]


def write_shards(inventory: str, count: int, strategy: Strategy, out: FsPath, urls: Sequence[str] | None = None) -> Written:
    """Plan, write and check the shard configs. ConfigError (file:line: key) for the inventory or a generated
    config; ValueError for a request the inventory cannot satisfy."""
    config = load_collector_config(inventory)
    ctx, raw = yaml_sections(read_config_file(inventory), inventory, "'agencies' and 'agents'")
    check_inventory_for_sharding(ctx, raw)
    urls = list(urls) if urls else default_urls(config, count)
    check_plan_request(config, count, strategy, urls)
    shards = plan_shards(config, count, strategy, urls)
    out.mkdir(parents=True, exist_ok=True)
    header = f"Generated by `netmon-collector shard --by {strategy} --shards {count}` from {inventory}: edit that file and run it again."
    files = []
    for shard in shards:
        path = out / f"{shard.name}.yml"
        text = dump(shard_sections(raw, shard, shards, strategy, config.listen_host), f"{header}\nShard {shard.name} of {count}, at {shard.url}.")
        parse_collector_config(text, str(path))  # what `check-config` will say of it: fails here rather than at start
        path.write_text(text, encoding="utf-8")
        files.append(path)
    for name, data in (("shards.yml", shard_map(shards, config, strategy)), ("prometheus-shards.yml", scrape_config(shards))):
        (out / name).write_text(dump(data, header), encoding="utf-8")
        files.append(out / name)
    return Written(tuple(shards), tuple(files))
