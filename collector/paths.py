"""The paths an agency's agents trace, read from the series store for the status page (docs/metrics.md#path).

An agent's `path` prober sends, per path target, one series per hop and family (`probe_path_hop_*{ttl,
hop_address}`) and a few per path (`probe_path_fault_hop{hop_address}`, `probe_path_destination_reached`). The
store indexes each agent's `probe_path_*` series as they arrive (`AgentState.path_labels`), so reading the paths
costs nothing for an agent without any, and only the path series themselves for the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from collector.store import AgentState

MAX_PATHS_PER_AGENCY = 3  # a card stays a card: the faulty paths first, then a count of the others

HOP_VALUES = {  # per-hop family -> the PathHop field it fills
    "probe_path_hop_packets_sent": "sent",
    "probe_path_hop_loss_ratio": "loss",
    "probe_path_hop_rtt_avg_seconds": "rtt_avg",
    "probe_path_hop_silent": "silent",
}
FAULT_HOP = "probe_path_fault_hop"
REACHED = "probe_path_destination_reached"


@dataclass(slots=True)
class PathHop:
    ttl: int
    address: str  # "" when it never answered
    stamp: int = -1  # the newest sample of its series: with two addresses at one TTL, the newer one is the hop
    sent: float | None = None
    loss: float | None = None  # None: a silent hop (it sends no time exceeded)
    rtt_avg: float | None = None  # seconds; None: nothing answered
    silent: bool = False


@dataclass(slots=True)
class AgentPath:
    agent: str
    target: str
    hops: list[PathHop] = field(default_factory=list)  # by TTL
    fault_ttl: int = 0  # the TTL from which loss persists to the destination; 0: none
    fault_address: str = ""
    reached: bool | None = None  # None: not reported

    @property
    def sort_key(self) -> tuple[bool, bool, str, str]:
        return (not self.fault_ttl, self.reached is not False, self.agent, self.target)


def agent_paths(state: AgentState) -> list[AgentPath]:
    """One agent's path targets with their hops, from the series it sent last (targets without hops left out)."""
    paths: dict[str, AgentPath] = {}
    hops: dict[tuple[str, int, str], PathHop] = {}
    for labels in state.path_labels:
        entry = state.series.get(labels)
        if entry is None or not math.isfinite(entry.value):  # NaN (nothing measured) or ±Inf: nothing to show
            continue
        label = dict(labels)
        target = label.get("target", "")
        path = paths.get(target)
        if path is None:
            path = paths[target] = AgentPath(state.agent.id, target)
        field_name = HOP_VALUES.get(entry.name)
        if field_name is not None and label.get("ttl", "").isdigit():
            ttl, address = int(label["ttl"]), label.get("hop_address", "")
            hop = hops.get((target, ttl, address))
            if hop is None:
                hop = hops[target, ttl, address] = PathHop(ttl, address)
            hop.stamp = max(hop.stamp, entry.timestamp_ms)
            setattr(hop, field_name, entry.value == 1 if field_name == "silent" else entry.value)
        elif entry.name == FAULT_HOP:
            path.fault_ttl, path.fault_address = int(entry.value), label.get("hop_address", "")
        elif entry.name == REACHED:
            path.reached = entry.value == 1
    for (target, ttl, _), hop in sorted(hops.items(), key=lambda item: (item[0][:2], item[1].stamp)):
        path_hops = paths[target].hops
        if path_hops and path_hops[-1].ttl == ttl:
            path_hops[-1] = hop  # the newer responder at this TTL (the older series has not ended yet)
        else:
            path_hops.append(hop)
    return [path for path in paths.values() if path.hops]


def agency_paths(states: Iterable[AgentState], limit: int = MAX_PATHS_PER_AGENCY) -> tuple[list[AgentPath], int]:
    """The paths of these agents, those with a fault hop first, then those not reaching their destination; at most
    `limit`, and how many more there are."""
    paths = sorted((path for state in states if state.path_labels for path in agent_paths(state)), key=lambda path: path.sort_key)
    return paths[:limit], max(len(paths) - limit, 0)
