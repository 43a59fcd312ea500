"""SNMP polling: config sections, profiles, the v1/v2c codec, sessions, walker, caches (docs/snmp.md).

The domain of the `snmp` prober (probe.py): it owns the snmp_* top-level keys (schema.py) and expands them into
targets (targets.py); the prober's table row (probe.SPEC) registers both.
"""
