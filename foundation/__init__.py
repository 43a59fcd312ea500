"""What the agent and the collector both stand on: wire formats (remote_write, Prometheus text), the durable queue
and its queued sender, the HTTP client and server, logging, and the config base. Imports nothing of either program."""

__version__ = "0.1.0"
