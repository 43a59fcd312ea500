"""The agent's memory budget (45 MB with 1,000 ICMP targets) needs heavy libraries loaded only when used."""

from __future__ import annotations

import json
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
