"""The prober table: config's `prober:` name -> settings type and probe function.

Adding a protocol is one file here, one test file and one line in this table.
"""

from agents.probes import dns, http, icmp, tcp
from agents.probes import imap, mail_roundtrip, pop3, smtp
from agents.probes import ssh
from agents.probes import snmp
from agents.probes.base import ProberSpec

PROBERS: dict[str, ProberSpec] = {
    spec.name: spec
    for spec in (
        icmp.SPEC,
        tcp.SPEC,
        dns.SPEC,
        http.SPEC,
        smtp.SPEC,
        imap.SPEC,
        pop3.SPEC,
        mail_roundtrip.SPEC,
        ssh.SPEC,
        snmp.SPEC,
    )
}
