"""Fleet management, agent side: fetch this agent's probe sets from the collector, merge them with the local
file, apply them like a SIGHUP reload, and keep the last good served config on disk (docs/fleet.md).

Precedence: the local file wins. Served `modules`, `ssh_hosts`, `snmp_auths`, `snmp_profiles` are merged with the
local ones by key and served `targets`, `ssh_checks`, `snmp_devices` by `name`; a local entry of the same key or
name replaces the served one, others are added. A local `host:` section replaces the served one whole.
Everything else (agent, listen, defaults, push, fleet, ...) is never served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path as FsPath
from typing import Any, Awaitable, Literal

from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric as Family
from prometheus_client.registry import Collector

from agents import USER_AGENT
from agents.catalog import config_from_sections
from agents.config.model import AgentConfig, AgentIdentity, FleetConfig
from foundation import __version__
from foundation.config.base import ConfigContext, ConfigError, ConfigErrors, read_config_file, yaml_sections
from foundation.config.yamlpos import Path, PositionedData
from foundation.fleet_protocol import (
    CONFIG_PATH,
    HASH_HEADER,
    KEYED_SECTIONS,
    NAMED_SECTIONS,
    SERVED_SECTIONS,
    VERSION_HEADER,
    WHOLE_SECTIONS,
    config_hash,
)
from foundation.httpclient import Endpoint, HttpClient, ProtocolError

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 8 << 20
FETCH_RETRY_FIRST = 1.0  # seconds before retrying a failed fetch, doubling with each failure in a row ...
FETCH_RETRY_MAX = 15.0  # ... up to this (or refresh_interval if shorter): the worst-case wait once the collector is back

Source = Literal["collector", "cache"]


@dataclass(frozen=True, slots=True)
class Served:
    text: str
    hash: str
    source: Source  # where this copy came from: fetched from the collector, or read from the cache file


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: AgentConfig
    local_hash: str
    served: Served | None


def load_agent_config(path: str, served: Served | None) -> LoadedConfig:
    """The local file, merged with served sections when it has `fleet:`. ConfigError names the file (local or
    served) and line the problem came from."""
    text = read_config_file(path)
    local_ctx, local = yaml_sections(text, path, "at least an 'agent' section")
    if "fleet" not in local or served is None:
        return LoadedConfig(config_from_sections(local_ctx, local), config_hash(text), None)
    served_ctx, served_sections = yaml_sections(served.text, served_label(served), "served sections")
    merged, origins = merge_sections(served_ctx, served_sections, local_ctx, local)
    try:
        config = config_from_sections(ConfigContext(f"{path} + {served_label(served)}", PositionedData(merged)), merged)
    except ConfigError as exc:
        raise _locate(exc, origins, local_ctx, served_ctx) from None
    return LoadedConfig(config, config_hash(text), served)


def load_at_start(path: str, fetch_when_needed: bool = False) -> LoadedConfig:
    """Start from the cached served config when there is one; a cache that no longer fits the local file is
    ignored (the next fetch replaces it). When neither the cache nor the local file alone makes a valid config
    (local targets using served modules, first start), fetch_when_needed fetches once before giving up."""
    text = read_config_file(path)
    ctx, local = yaml_sections(text, path, "at least an 'agent' section")
    if "fleet" not in local:
        return load_agent_config(path, None)
    fleet: FleetConfig = ctx.convert(local["fleet"], FleetConfig, ("fleet",))
    cached = read_cache(fleet.cache_file)
    if cached is not None:
        try:
            return load_agent_config(path, cached)
        except ConfigError as exc:
            log.warning("cached served config %s does not apply, starting from the local file alone: %s", fleet.cache_file, exc)
    try:
        return load_agent_config(path, None)
    except ConfigError as exc:
        fetched = _fetch_at_start(fleet, ctx.convert(local.get("agent"), AgentIdentity, ("agent",)).id) if fetch_when_needed else None
        if fetched is None:
            raise exc if cached is not None else _noting_nothing_served_yet(exc, fleet.cache_file, fetch_when_needed) from None
    loaded = load_agent_config(path, fetched)
    try:
        write_cache(fleet.cache_file, fetched.text)
    except OSError as exc:
        log.error("cannot write the served-config cache %s: %s", fleet.cache_file, exc)
    return loaded


def _noting_nothing_served_yet(exc: ConfigError, cache_file: str, fetch_tried: bool) -> ConfigError:
    """The local file alone failed and no served config is known: an error may name a served module or auth."""
    how = ", and the fetch at start failed" if fetch_tried else "; `netmon-agent run` fetches one at start"
    note = f"no served config has been fetched yet (no cache file {cache_file}{how}), so served modules and targets are not known"
    return _each(exc, lambda one: ConfigError(one.file, one.line, one.path, f"{one.message}; {note}"))


def _each(exc: ConfigError, change: Callable[[ConfigError], ConfigError]) -> ConfigError:
    changed = [change(one) for one in exc.each()]
    return changed[0] if len(changed) == 1 else ConfigErrors(changed)


def _fetch_at_start(fleet: FleetConfig, agent_id: str) -> Served | None:
    endpoint = _endpoint(fleet, agent_id)
    try:
        reply = asyncio.run(fetch(endpoint, None))
    except (OSError, TimeoutError, FetchError) as exc:
        log.error("cannot fetch the config from %s: %s", endpoint.url, exc or type(exc).__name__)
        return None
    if reply.status != 200:
        log.error("the collector answered %d to %s: %s", reply.status, endpoint.url, reply.body[:200].strip())
        return None
    return Served(reply.body, config_hash(reply.body), "collector")


def served_label(served: Served) -> str:
    return f"served config {served.hash}"


def merge_sections(
    served_ctx: ConfigContext, served: dict[str, Any], local_ctx: ConfigContext, local: dict[str, Any]
) -> tuple[dict[str, Any], dict[Path, tuple[str, Path]]]:
    """Local over served (see the module doc). Also returns, for each merged entry, which side it came from and
    its key path there, so an error in the merged config points at the right file and line."""
    unknown = sorted(set(served) - set(SERVED_SECTIONS))
    if unknown:
        raise served_ctx.error((unknown[0],), f"the collector may not serve {unknown[0]!r}; served sections: {', '.join(SERVED_SECTIONS)}")
    merged = dict(local)
    origins: dict[Path, tuple[str, Path]] = {}
    for section in KEYED_SECTIONS + NAMED_SECTIONS:
        kind = dict if section in KEYED_SECTIONS else list
        served_part, local_part = served.get(section) or kind(), local.get(section) or kind()
        if not isinstance(served_part, kind) or not isinstance(local_part, kind):
            side = "served" if not isinstance(served_part, kind) else "local"
            raise (served_ctx if side == "served" else local_ctx).error((section,), f"must be a {'mapping' if kind is dict else 'list'}")
        if kind is dict:
            _merge_keyed(section, served_part, local_part, merged, origins)
        else:
            _merge_named(section, served_part, local_part, merged, origins)
    for section in WHOLE_SECTIONS:
        if section in served and section not in local:
            merged[section] = served[section]
            origins[(section,)] = ("served", (section,))
    return merged, origins


def _merge_keyed(section: str, served: dict[str, Any], local: dict[str, Any], merged: dict[str, Any], origins: dict[Path, tuple[str, Path]]) -> None:
    if served or local:
        merged[section] = {**served, **local}
        origins.update({(section, key): ("served", (section, key)) for key in served if key not in local})
        origins.update({(section, key): ("local", (section, key)) for key in local})


def _merge_named(section: str, served: list[Any], local: list[Any], merged: dict[str, Any], origins: dict[Path, tuple[str, Path]]) -> None:
    local_names = {entry.get("name") for entry in local if isinstance(entry, dict)}
    entries: list[Any] = []
    for side, items in (("served", served), ("local", local)):
        for index, entry in enumerate(items):
            if side == "served" and isinstance(entry, dict) and entry.get("name") in local_names:
                continue
            origins[(section, len(entries))] = (side, (section, index))
            entries.append(entry)
    if entries:
        merged[section] = entries


def _locate(exc: ConfigError, origins: dict[Path, tuple[str, Path]], local_ctx: ConfigContext, served_ctx: ConfigContext) -> ConfigError:
    return _each(exc, lambda one: _locate_one(one, origins, local_ctx, served_ctx))


def _locate_one(exc: ConfigError, origins: dict[Path, tuple[str, Path]], local_ctx: ConfigContext, served_ctx: ConfigContext) -> ConfigError:
    for length in (2, 1):
        origin = origins.get(exc.path[:length])
        if origin is not None:
            side, where = origin
            ctx = served_ctx if side == "served" else local_ctx
            return ctx.error(where + exc.path[length:], exc.message)
    return local_ctx.error(exc.path, exc.message)


def read_cache(path: str) -> Served | None:
    try:
        text = FsPath(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read the served-config cache %s: %s", path, exc)
        return None
    return Served(text, config_hash(text), "cache")


def write_cache(path: str, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, rename: a crash leaves the old or the new file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".fleet-cache-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@dataclass(frozen=True, slots=True)
class FetchReply:
    status: int
    body: str
    etag: str | None


class FetchError(Exception):
    """The collector's reply could not be read as HTTP."""


@dataclass(slots=True)
class FetchStats:
    last_success: float = 0.0  # 1 or 0: whether the last fetch got a 200 or 304
    last_success_time: float = 0.0  # unix seconds of the last fetch answered 200 or 304


class ConfigInfoCollector(Collector):
    """netmon_agent_config_info{source,hash} and, with `fleet:`, the last fetch's outcome and time."""

    def __init__(self, current: Callable[[], tuple[str, Served | None, FetchStats | None]]) -> None:
        self._current = current  # (local file hash, served config in use, fetch stats while fleet is on)

    def collect(self) -> Iterator[Family]:
        local_hash, served, stats = self._current()
        info = GaugeMetricFamily(
            "netmon_agent_config_info", "The config this agent runs: the local file, and the served part with where it came from",
            labels=["source", "hash"],
        )
        info.add_metric(["local", local_hash], 1.0)
        if served is not None:
            info.add_metric([served.source, served.hash], 1.0)
        yield info
        if stats is not None:
            yield GaugeMetricFamily(
                "netmon_agent_config_last_fetch_success", "Whether the last config fetch from the collector succeeded (200 or 304)",
                value=stats.last_success,
            )
            yield GaugeMetricFamily(
                "netmon_agent_config_last_fetch_timestamp_seconds", "When a config fetch from the collector last succeeded (0: never)",
                value=stats.last_success_time,
            )


class FleetSync:
    """Fetches the served config every refresh_interval (sooner after a failed fetch) and hands a changed one to
    `apply`; a 304 for the config in use goes to `confirmed`."""

    def __init__(self, fleet: FleetConfig, agent_id: str, applied: Callable[[], Served | None],
                 apply: Callable[[Served], Awaitable[bool]], confirmed: Callable[[Served], Awaitable[None]]) -> None:
        self.config = fleet
        self.agent_id = agent_id
        self.stats = FetchStats()
        self._applied = applied
        self._apply = apply
        self._confirmed = confirmed
        self._failures = 0  # failed fetches in a row worth retrying soon (network errors, timeouts, 5xx)
        self._endpoint = _endpoint(fleet, agent_id)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - a bug here must not end fetching for the agent's lifetime
                log.exception("config refresh from %s failed", self._endpoint.url)
                self.stats.last_success = 0.0
            await asyncio.sleep(self._next_delay())

    def _next_delay(self) -> float:
        refresh = float(self.config.refresh_interval)
        return retry_delay(self._failures, refresh) if self._failures else refresh

    async def refresh(self) -> None:
        applied = self._applied()
        try:
            reply = await fetch(self._endpoint, applied.hash if applied else None)
        except (OSError, TimeoutError, FetchError) as exc:
            self._failed(f"cannot fetch the config from {self._endpoint.url}: {exc or type(exc).__name__}")
            return
        if reply.status == 304 and applied is not None:
            self._succeeded()
            if applied.source != "collector":
                await self._apply(replace(applied, source="collector"))
            else:
                await self._confirmed(applied)
            return
        if reply.status != 200:
            message = f"the collector answered {reply.status} to {self._endpoint.url}: {reply.body[:200].strip()}"
            self._failed(message, retry_soon=reply.status >= 500)
            return
        self._succeeded()
        served = Served(reply.body, config_hash(reply.body), "collector")
        if applied is None or served.hash != applied.hash or applied.source != "collector":
            if await self._apply(served):
                await self._save(served)
                await self._report_applied(served)

    async def _report_applied(self, served: Served) -> None:
        """Fetch again at once (a 304), so the collector sees the new hash now rather than a refresh later."""
        with contextlib.suppress(OSError, TimeoutError, FetchError):
            await fetch(self._endpoint, served.hash)

    async def _save(self, served: Served) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, write_cache, self.config.cache_file, served.text)
        except OSError as exc:
            log.error("cannot write the served-config cache %s: %s", self.config.cache_file, exc)

    def _succeeded(self) -> None:
        self._failures = 0
        self.stats.last_success = 1.0
        self.stats.last_success_time = time.time()

    def _failed(self, message: str, retry_soon: bool = True) -> None:
        """retry_soon: the collector may be back in seconds; a refusal (4xx) waits for the regular refresh."""
        log.warning("%s", message)
        self._failures = self._failures + 1 if retry_soon else 0
        self.stats.last_success = 0.0


def retry_delay(failures: int, refresh_interval: float) -> float:
    """The wait after this many failed fetches in a row: capped exponential backoff, never longer than the
    regular refresh, and jittered so that agents cut off together do not all return at once."""
    ceiling = min(FETCH_RETRY_FIRST * 2 ** min(failures - 1, 16), FETCH_RETRY_MAX, refresh_interval)
    return random.uniform(ceiling / 2, ceiling)


def _endpoint(fleet: FleetConfig, agent_id: str) -> Endpoint:
    url = fleet.url.rstrip("/") + CONFIG_PATH.format(agent=agent_id)
    return Endpoint.configured(url, float(fleet.timeout), fleet.tls, fleet.bearer_token or fleet.bearer_token_file)


async def fetch(endpoint: Endpoint, applied_hash: str | None) -> FetchReply:
    """One GET of the served config, on a connection of its own, bounded by the endpoint's timeout."""
    headers = [(VERSION_HEADER, __version__), ("Accept", "application/yaml")]
    if applied_hash is not None:
        headers += [("If-None-Match", f'"{applied_hash}"'), (HASH_HEADER, applied_hash)]
    client = HttpClient(endpoint, USER_AGENT, keep_alive=False)
    try:
        reply = await client.get(tuple(headers), max_body=MAX_CONFIG_BYTES)
    except ProtocolError as exc:
        raise FetchError(str(exc)) from exc
    try:
        text = reply.body.decode("utf-8")
    except UnicodeDecodeError:
        raise FetchError("the served config is not UTF-8") from None
    return FetchReply(reply.status, text, reply.headers.get("etag"))
