"""Probers: one file per protocol behind one interface (base.py), and their building blocks (resolve, tlsinfo,
mailproto).

Nothing here imports every prober: the name -> prober table is agents/catalog.py, above the probers and the
domains (ssh, snmp) whose probers live in their own packages.
"""
