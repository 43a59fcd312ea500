"""SNMP polling: config sections, profiles, the v1/v2c codec, sessions, walker, caches (docs/snmp.md).

Nothing is imported here: agents.config.model imports agents.snmp.schema while agents.config is loading.
"""
