"""egov-netmon agent: probes on its own schedule, keeps the latest results, serves /metrics."""
