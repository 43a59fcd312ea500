"""The running agent: config -> scheduler -> probers -> store -> /metrics, with reload and shutdown."""

from __future__ import annotations

import asyncio
import html
import itertools
import logging
import signal
import sys
import time

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from agents.config import AgentConfig, ConfigError, Target
from agents.config.model import FleetConfig
from agents.exposition import render_chunks, result_families
from agents.fleet import ConfigInfoCollector, FleetSync, Served, load_agent_config
from agents.host.collector import HostCollector
from agents.host.config import host_config
from agents.path.triggers import PathTriggers
from agents.path.web import TRACE_ARGS, TraceRequests
from agents.resources import ProbeResources
from agents.results import ProbeResult, ProbeTarget
from agents.runner import prepare_modules, run_probe
from agents.scheduler import Scheduler
from agents.selfmetrics import AgentMetrics
from agents.store import ResultStore
from foundation import __version__
from foundation.config.remote_write import PushConfig
from foundation.httprefusals import RefusalsCollector
from foundation.httpserver import HttpError, HttpServer, Request, Response, require_method
from foundation.logs import protect_secrets
from foundation.textformat import render_families

log = logging.getLogger(__name__)


class Agent:
    def __init__(
        self, config: AgentConfig, config_path: str, listen: tuple[str, int] | None = None,
        served: Served | None = None, local_hash: str = "",
    ) -> None:
        self.config = config
        self.served = served  # the collector's part of the config, while the local file has `fleet:`
        self.local_hash = local_hash
        self._config_path = config_path
        self._listen_override = listen
        disable_created_metrics()  # *_created series double the counters' cost for no use here
        self.registry = CollectorRegistry(auto_describe=False)
        self.metrics = AgentMetrics(self.registry)
        self.store = ResultStore()
        # follows reloads; kept out of the registry: /metrics writes its text directly (render), push collects it
        self.host = HostCollector(lambda: host_config(self.config))
        self.resources = ProbeResources()
        self.path_triggers = PathTriggers()
        self._traces = TraceRequests(self.resources)
        self._triggered = Counter(
            "netmon_agent_path_traces_triggered", "Path traces run at once because their parent target degraded",
            ["target", "parent"], registry=self.registry,
        )
        self._scheduler: Scheduler | None = None
        self._server: HttpServer | None = None
        self.registry.register(RefusalsCollector("netmon_agent", lambda: self._server))
        self._stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._refused_served = False  # the last reload failed on a served config (reload_ok is 0 for that reason)
        self.reload_failure: tuple[float, str] | None = None  # when and why the last reload failed, for the status page
        self.address: tuple[str, int] | None = None
        self.pusher = None  # an agents.push.Pusher while the config has a `push:` section
        self.fleet: FleetSync | None = None  # while the config has a `fleet:` section
        self._fleet_task: asyncio.Task[None] | None = None
        self.registry.register(
            ConfigInfoCollector(lambda: (self.local_hash, self.served, self.fleet.stats if self.fleet else None))
        )

    async def start(self) -> None:
        self._scheduler = Scheduler(
            self.config.agent.id, self.store, self.metrics, self.resources, self.config.max_concurrent_probes,
            on_result=self._on_result,
        )
        self._server = HttpServer(
            {
                "/metrics": self._handle_metrics,
                "/probe": self._handle_probe,
                "/trace": self._handle_trace,
                "/": self._handle_index,
                "/-/healthy": self._handle_healthy,
            }
        )
        host, port = self._listen_override or (self.config.listen_host, self.config.listen_port)
        self.address = await self._server.start(host, port)
        self.metrics.apply_config(self.config)
        self.metrics.reload_ok.set(1)
        self.metrics.reload_time.set(time.time())
        await self._apply_push(self.config.push)
        self.path_triggers.apply(self.config)
        prepare_modules(self.config.targets, self.resources)
        await self._scheduler.apply(self.config.targets)
        await self._apply_fleet(self.config.fleet)
        log.info(
            "agent %s (%s) listening on %s:%d with %d targets",
            self.config.agent.id, self.config.agent.name or self.config.agent.agency, *self.address, len(self.config.targets),
        )

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        if sys.platform != "win32":  # Windows has neither SIGHUP nor loop signal handlers: Ctrl+C cancels this task
            loop.add_signal_handler(signal.SIGTERM, self._stopping.set)
            loop.add_signal_handler(signal.SIGINT, self._stopping.set)
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def stop(self) -> None:
        log.info("agent stopping")
        if self._scheduler is not None:
            await self._scheduler.stop()
        await self._apply_fleet(None)
        await self._apply_push(None)
        if self._server is not None:
            await self._server.close()
        self.resources.close()

    async def reload(self) -> bool:
        """Re-read the config file; keep running the old one if the new one is invalid."""
        return await self._load_and_apply(None, "config reload")

    async def apply_served(self, served: Served) -> bool:
        """A config the fleet sync fetched: merged with the local file and applied like a reload."""
        return await self._load_and_apply(served, f"applying served config {served.hash}")

    async def _load_and_apply(self, served: Served | None, what: str) -> bool:
        """served None: keep the served config in use."""
        async with self._reload_lock:
            try:
                loaded = load_agent_config(self._config_path, served or self.served)
            except ConfigError as exc:
                log.error("%s failed, keeping the previous config: %s", what, exc)
                self.metrics.reload_ok.set(0)
                self._refused_served = served is not None
                self.reload_failure = (time.time(), f"{what} failed, the previous config keeps running: {exc}")
                return False
            self.reload_failure = None
            new_config = loaded.config
            protect_secrets(new_config)  # secrets new in this config (a served SNMP community) are masked in logs too
            self.config, self.served, self.local_hash = new_config, loaded.served, loaded.local_hash
            push_ok = await self._reload_push(new_config)
            self.resources.reload()  # state built from files (CA bundles, client certs): they may have been replaced
            assert self._scheduler is not None
            self.path_triggers.apply(new_config)
            prepare_modules(new_config.targets, self.resources)
            await self._scheduler.apply(new_config.targets, new_config.max_concurrent_probes)
            self.metrics.apply_config(new_config)
            self.metrics.reload_ok.set(1 if push_ok else 0)
            self.metrics.reload_time.set(time.time())
            self._refused_served = False
            await self._apply_fleet(new_config.fleet)
            served_note = f" (served config {self.served.hash} from the {self.served.source})" if self.served else ""
            log.info("config reloaded: %d targets%s", len(new_config.targets), served_note)
            return push_ok

    async def served_confirmed(self, served: Served) -> None:
        """The collector answered 304 for the served config in use. If the last reload failed on a served config,
        that one is withdrawn (its template reverted) and this agent runs what it should: the failure is over."""
        async with self._reload_lock:
            if self._refused_served and self.served is not None and served.hash == self.served.hash:
                self._refused_served = False
                self.metrics.reload_ok.set(1)
                self.reload_failure = None
                log.info("the collector serves the config in use (%s) again: the config it refused is withdrawn", served.hash)

    async def _reload_push(self, new_config: AgentConfig) -> bool:
        try:
            await self._apply_push(new_config.push)
        except OSError as exc:
            log.error("config reload: pushing is off, its queue cannot be opened: %s", exc)
            self.reload_failure = (time.time(), f"config reload: pushing is off, its queue cannot be opened: {exc}")
            return False
        return True

    async def _apply_push(self, push: PushConfig | None) -> None:
        """Start, restart or stop pushing to follow the config; OSError if the queue cannot be opened."""
        if self.pusher is not None and self.pusher.config == push:
            return
        if self.pusher is not None:
            await self.pusher.stop(self.registry)
            self.pusher = None
        if push is not None:
            from agents.push import Pusher  # protobuf and the queue only for agents that push

            self.pusher = await Pusher.start(push, self.store, self.registry, also=(self.host,))

    async def _apply_fleet(self, fleet: FleetConfig | None) -> None:
        """Start, restart or stop the fleet sync to follow the config."""
        if self.fleet is not None and self.fleet.config == fleet and self.fleet.agent_id == self.config.agent.id:
            return
        old_task, self._fleet_task, self.fleet = self._fleet_task, None, None
        if old_task is not None:
            old_task.cancel()
            if old_task is not asyncio.current_task():  # a sync applying a config that turns itself off
                await asyncio.gather(old_task, return_exceptions=True)
        if fleet is not None:
            self.fleet = FleetSync(fleet, self.config.agent.id, lambda: self.served, self.apply_served, self.served_confirmed)
            self._fleet_task = asyncio.create_task(self.fleet.run(), name="fleet:sync")

    def _on_result(self, target: Target, result: ProbeResult) -> None:
        if self.pusher is not None:
            self.pusher.on_result(target, result)
        for trigger in self.path_triggers.due(target.name, result, time.monotonic()):
            if self._scheduler is not None and self._scheduler.run_now(trigger.path):
                self._triggered.labels(trigger.path, target.name).inc()
                log.info("tracing %s at once: %s", trigger.path, trigger.reason)

    async def _handle_metrics(self, request: Request) -> Response:
        require_method(request, "GET")
        # self-metrics (prometheus_client families) and host metrics (their own text, HostCollector.render), made now
        # as one chunk (an error is a 500, not a cut body); probe results: read from the store while streaming.
        head = "".join(render_families(self.registry.collect())) + self.host.render()
        chunks = itertools.chain((head,), render_chunks(self.store.states()))
        return Response(200, (chunk.encode("utf-8") for chunk in chunks), CONTENT_TYPE_LATEST)

    async def _handle_probe(self, request: Request) -> Response:
        """blackbox_exporter's /probe: `target` is an address, `module` a configured module."""
        require_method(request, "GET")
        address, module_name = request.arg("target"), request.arg("module")
        if not address:
            raise HttpError(400, "target parameter is missing")
        if not module_name:
            raise HttpError(400, "module parameter is missing")
        module = self.config.modules.get(module_name)
        if module is None:
            raise HttpError(400, f"unknown module {module_name!r}")
        result = await run_probe(ProbeTarget(address, address), module, self.resources)
        return Response(200, "".join(render_families(result_families(result))).encode("utf-8"), CONTENT_TYPE_LATEST)

    async def _handle_trace(self, request: Request) -> Response:
        """One on-demand path trace: /trace?target=ADDRESS[&module=M][&count=N][&max_hops=N][&format=table]."""
        require_method(request, "GET")
        args = {name: request.arg(name) for name in TRACE_ARGS}
        status, body, content_type = await self._traces.handle(args, self.config.modules)
        return Response(status, body.encode(), content_type)

    async def _handle_healthy(self, request: Request) -> Response:
        return Response.text(200, "Healthy\n")

    async def _handle_index(self, request: Request) -> Response:
        require_method(request, "GET")
        return Response(200, render_index(self).encode(), "text/html; charset=utf-8")


def render_index(agent: Agent) -> str:
    rows = []
    for state in sorted(agent.store.states(), key=lambda s: s.target.name):
        latest = state.latest
        status = "—" if latest is None else ("OK" if latest.success else f"FAIL ({latest.failure.value if latest.failure else '?'})")
        detail = "" if latest is None else latest.detail
        rows.append(
            f"<tr><td>{html.escape(state.target.name)}</td><td>{html.escape(state.target.module.name)}</td>"
            f"<td>{html.escape(state.target.address)}</td><td>{html.escape(status)}</td>"
            f"<td>{(latest.duration_seconds if latest else 0):.3f}s</td><td>{html.escape(detail)}</td></tr>"
        )
    identity = agent.config.agent
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>netmon agent</title></head><body>"
        f"<h1>netmon-agent {html.escape(identity.id)}</h1><p>{html.escape(identity.name or identity.agency)} — "
        f"version {__version__}</p>{_reload_failure_note(agent)}<p><a href='/metrics'>/metrics</a></p>"
        "<table border='1' cellpadding='4'><tr><th>target</th><th>module</th><th>address</th><th>status</th>"
        f"<th>duration</th><th>detail</th></tr>{''.join(rows)}</table></body></html>"
    )


def _reload_failure_note(agent: Agent) -> str:
    """The last reload failed (netmon_agent_config_last_reload_successful 0): say when and why, until one succeeds."""
    if agent.reload_failure is None:
        return ""
    when, why = agent.reload_failure
    shown = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(when))
    return (
        "<div class='reload-failed' style='border:2px solid #c62828;background:#fdecea;padding:.5rem'>"
        f"<b>Config reload failed</b> at {shown}<br><code>{html.escape(why)}</code></div>"
    )
