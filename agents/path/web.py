"""The agent's `/trace?target=ADDRESS`: one on-demand trace, answered as JSON (or `format=table`, as the CLI prints).

Optional arguments: `module` (a configured path module; default: the path prober's defaults), `count` and
`max_hops` (within the prober's bounds). At most MAX_CONCURRENT traces run at once; more get 429, so the page
cannot be used to flood a path or the agent.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import msgspec

from agents.config.model import ModuleConfig
from agents.path.probe import PathSettings, TraceError, module_for, trace_path
from agents.path.report import report_json, report_table
from agents.resources import ProbeResources
from agents.results import Failure
from foundation.httpserver import HttpError

TRACE_ARGS = ("target", "module", "count", "max_hops", "format")
MAX_CONCURRENT = 2
JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"


class TraceRequests:
    def __init__(self, resources: ProbeResources) -> None:
        self._resources = resources
        self._running = 0

    async def handle(self, args: Mapping[str, str | None], modules: Mapping[str, ModuleConfig[Any]]) -> tuple[int, str, str]:
        """(status, body, content type) of one /trace request; raises HttpError for a bad one."""
        address = args.get("target")
        if not address:
            raise HttpError(400, "target parameter is missing")
        as_table = _output_format(args.get("format"))
        module = _module(args, modules)
        if self._running >= MAX_CONCURRENT:
            raise HttpError(429, f"{MAX_CONCURRENT} traces are running already; try again when one has finished")
        self._running += 1
        try:
            report = await trace_path(address, module, self._resources)
        except TraceError as exc:
            raise HttpError(400 if exc.failure == Failure.RESOLVE else 503, f"{exc.failure}: {exc.detail}") from None
        finally:
            self._running -= 1
        if as_table:
            return 200, report_table(report) + "\n", TEXT_TYPE
        return 200, json.dumps(report_json(report), ensure_ascii=False, indent=2) + "\n", JSON_TYPE


def _output_format(value: str | None) -> bool:
    if value in (None, "", "json"):
        return False
    if value == "table":
        return True
    raise HttpError(400, f"unknown format {value!r}: json or table")


def _module(args: Mapping[str, str | None], modules: Mapping[str, ModuleConfig[Any]]) -> ModuleConfig[PathSettings]:
    name = args.get("module")
    preferred = "ip4"
    settings = PathSettings()
    if name:
        module = modules.get(name)
        if module is None or module.prober != "path":
            known = ", ".join(sorted(m.name for m in modules.values() if m.prober == "path")) or "none configured"
            raise HttpError(400, f"unknown path module {name!r} (path modules: {known})")
        settings, preferred = module.settings, module.preferred_ip_protocol
    changes = {key: _integer(args, key) for key in ("count", "max_hops") if args.get(key)}
    try:
        return module_for(msgspec.structs.replace(settings, **changes), preferred)
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None


def _integer(args: Mapping[str, str | None], key: str) -> int:
    try:
        return int(args[key] or "")
    except ValueError:
        raise HttpError(400, f"{key}: expected an integer, got {args[key]!r}") from None
