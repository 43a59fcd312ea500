"""SSH checks of servers that run no agent: host config, host key policy, connection pool, output parsers.

The domain of the `ssh` prober (probe.py): it owns the ssh_hosts and ssh_checks top-level keys (config.py) and
expands them into targets (targets.py); the prober's table row (probe.SPEC) registers both.
"""
