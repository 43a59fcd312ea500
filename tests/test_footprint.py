"""The agent's memory budget (45 MB with 1,000 ICMP targets) needs heavy libraries loaded only when used."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("paramiko", "pysnmp", "pyasn1", "dns", "cryptography", "google.protobuf", "cramjam", "lxml", "cssselect", "jsonpath")


def test_loading_the_agent_and_its_config_imports_no_heavy_library():
    script = (
        "import json, sys\n"
        "import agents.app, agents.cli\n"
        "from agents.catalog import load_config\n"
        "load_config('config/agent.example.yml')\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {[h.split('.')[0] for h in HEAVY]!r})\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) forking pytest process
        "hwm_kb = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "print(json.dumps({'heavy': heavy, 'rss_mb': hwm_kb / 1024}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(out.stdout)
    assert report["heavy"] == [], report["heavy"]
    assert report["rss_mb"] < 40, report  # the whole budget is 45 MB with 1,000 targets (tests/bench)


def test_every_probers_run_time_modules_load_no_pysnmp_invoke_or_x509_and_stay_under_the_bound(tmp_path):
    """What each prober loads on first use (its prepare, and the modules its first probe imports), all at once:
    SNMPv3 keys and ciphers are ours (no pysnmp/pyasn1), paramiko comes without Invoke, certificates are read
    without cryptography.x509. Measured 51.2 MB (56.4 MB before; docs/benchmarks.md "Agent memory, every prober
    in use"); SSH's paramiko and cryptography are 13.8 MB of it."""
    from tests.support.certs import make_ca

    der_file = tmp_path / "ca.der"
    der_file.write_bytes(ssl.PEM_cert_to_DER_cert(make_ca(tmp_path).cert.read_text()))
    script = (
        "import asyncio, json, sys\n"
        "import agents.app, agents.cli\n"
        "from agents.catalog import PROBERS, load_config\n"
        "from agents.resources import ProbeResources\n"
        "from agents.probes.tlsinfo import certificate_samples\n"
        "from agents.snmp.privacy import load_ciphers\n"
        "import agents.ssh.pool\n"
        "config = load_config('config/agent.example.yml')\n"
        "async def main():\n"
        "    resources = ProbeResources()\n"
        "    for module in config.modules.values():\n"
        "        PROBERS[module.prober].prepare(module, resources)\n"
        "    resources.close()\n"
        "asyncio.run(main())\n"
        "load_ciphers()\n"
        f"assert certificate_samples([open({str(der_file)!r}, 'rb').read()])\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'pysnmp', 'pyasn1', 'invoke'}"
        " | ({'cryptography.x509'} & set(sys.modules)))\n"
        "hwm_kb = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"
        "print(json.dumps({'loaded': loaded, 'rss_mb': hwm_kb / 1024, 'dns': 'dns.asyncquery' in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(out.stdout)
    assert report["dns"], report  # the example config's dns module was prepared: its library counts in the figure
    assert report["loaded"] == [], report
    assert report["rss_mb"] < 55, report


def test_a_scrape_of_1000_targets_holds_no_more_than_a_chunk_of_lines():
    """/metrics writes as it streams: tracemalloc's peak while rendering 1,000 ICMP-shaped targets (34,000 lines,
    1.7 MB of text) was 10.4 MB when every row was built first, 1.2 MB now."""
    import tracemalloc

    from agents.catalog import parse_config
    from agents.exposition import render_chunks
    from agents.results import Metric, ProbeResult
    from agents.store import ResultStore

    gauges = [Metric(f"probe_gauge_{n}", "a gauge") for n in range(8)]
    sent, received = Metric("probe_sent_total", "sent", "counter"), Metric("probe_received_total", "received", "counter")
    rtt = Metric("probe_rtt_seconds", "rtt", "histogram", buckets=tuple(0.0001 * 2**n for n in range(16)))
    config = parse_config(
        "agent: {id: a, agency: b}\nmodules: {tcp: {prober: tcp}}\ntargets:\n"
        + "".join(f'  - {{name: t{n}, address: "127.0.0.1:{n + 1}", module: tcp}}\n' for n in range(1000)),
        "x.yml",
    )
    store = ResultStore()
    for target in config.targets:
        samples = [gauge(1.5) for gauge in gauges] + [sent(5), received(5), rtt.observe([0.001, 0.002])]
        store.record(target, ProbeResult(True, samples=samples))
    states = store.states()
    tracemalloc.start()
    try:
        written = sum(len(chunk) for chunk in render_chunks(states))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert written > 1_500_000
    assert peak < 3_000_000, peak
