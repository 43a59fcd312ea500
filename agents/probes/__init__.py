"""The prober table: config's `prober:` name -> settings type and probe function.

Adding a protocol is one file here, one test file and one line in this table.
"""

from agents.probes import dns, http, icmp, tcp
from agents.probes.base import ProberSpec

PROBERS: dict[str, ProberSpec] = {
    spec.name: spec
    for spec in (
        icmp.SPEC,
        tcp.SPEC,
        dns.SPEC,
        http.SPEC,
    )
}
