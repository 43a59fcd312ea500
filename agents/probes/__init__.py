"""Probers: one file per protocol behind one interface (base.py); the name -> prober table is table.py.

The table is a module of its own so that importing one prober's building blocks (base, tlsinfo, resolve)
does not import every prober.
"""
