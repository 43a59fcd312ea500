"""The agent's metrics about itself, in the agent's own registry (never the global one)."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

from agents.config.model import AgentConfig
from foundation import __version__

LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        ProcessCollector(registry=registry)
        self.build_info = Gauge(
            "netmon_agent_build_info", "Version of the netmon agent", ["version", "python_version"], registry=registry
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.identity = Gauge(
            "netmon_agent_info", "Identity of this agent; `name` is the agency's name", ["agent", "agency", "name"], registry=registry
        )
        self.targets = Gauge("netmon_agent_targets", "Targets configured and scheduled", registry=registry)
        self.in_flight = Gauge("netmon_agent_probes_in_flight", "Probes running right now", registry=registry)
        self.runs = Counter(
            "netmon_agent_probe_runs", "Probe runs completed, by result", ["target", "module", "result"], registry=registry
        )
        self.failures = Counter(
            "netmon_agent_probe_failures", "Failed probe runs by bounded reason", ["target", "module", "reason"], registry=registry
        )
        self.overruns = Counter(
            "netmon_agent_probe_overruns",
            "Scheduled probe runs skipped because the previous run of the target was still going",
            ["target", "module"],
            registry=registry,
        )
        self.lag = Histogram(
            "netmon_agent_scheduling_lag_seconds",
            "Delay between a probe's scheduled start and its actual start",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self.reload_ok = Gauge(
            "netmon_agent_config_last_reload_successful", "Whether the last configuration reload attempt was successful", registry=registry
        )
        self.reload_time = Gauge(
            "netmon_agent_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload",
            registry=registry,
        )

    def apply_config(self, config: AgentConfig) -> None:
        self.identity.clear()
        self.identity.labels(config.agent.id, config.agent.agency, config.agent.name).set(1)
        self.targets.set(len(config.targets))

    def forget_targets(self, names: set[str]) -> None:
        """Drop per-target series of targets removed by a reload."""
        for family in (self.runs, self.failures, self.overruns):
            for labels in list(family._metrics):  # prometheus_client keeps children keyed by label values
                if labels[0] in names:
                    family.remove(*labels)
