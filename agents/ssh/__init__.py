"""SSH checks of servers that run no agent: host config, host key policy, connection pool, output parsers.

The `ssh` prober (agents/probes/ssh.py) runs one check; the loader expands `ssh_checks` into its targets.
"""
