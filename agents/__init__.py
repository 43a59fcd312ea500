"""egov-netmon agent: probes on its own schedule, keeps the latest results, serves /metrics."""

from foundation import __version__

USER_AGENT = f"netmon-agent/{__version__}"  # what the agent's push and config fetch send to the collector
