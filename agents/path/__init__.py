"""Path diagnosis: the `path` prober (hop-by-hop loss and RTT, mtr-grade), where a degraded path breaks
(`fault_hop`), and the triggers that trace a path at once when its parent target degrades."""
