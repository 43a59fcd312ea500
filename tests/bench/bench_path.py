"""CPU per path trace (8 hops x 10 probes): netmon-agent's path prober vs `mtr --report` sending the same probes.

    cd /work/main && .venv/bin/python tests/bench/bench_path.py [--traces 10] [--count 10] [--interval 0.1]

Needs root (namespaces; mtr's intervals under 1 s). The path is a chain of namespaces, agency -> 7 routers ->
server (tests/support/pathchain.py, `linear_chain`): 8 hops, every router answering time exceeded, no ICMP rate
limit. Both tools send `count` cycles `interval` apart with TTL 1..8 (`--max-hops 8`, `mtr -m 8`), 80 probes a
trace, one after the other in the agency's namespace:

- mtr: `mtr -n --report -c COUNT -i INTERVAL -m 8 SERVER`, run --traces times; its CPU (mtr and its mtr-packet
  helper, user + system) from the children's rusage, per run.
- netmon-agent: one Python process (in the namespace) that imports the agent, runs one trace to warm up, then
  --traces traces through the path prober (`agents.path.probe.trace_path`, the ICMP engine's shared socket), and
  reports its own CPU time (user + system) per trace: the cost inside a running agent, without the interpreter's
  start. The CLI's whole-process CPU (`netmon-agent trace`, start included) is printed beside it for reference.

The load average is printed first; above 1.0 the machine is not idle, and the script prints the raw figures but
no ratio (CPU per trace on a busy machine measures the neighbours as much as the tools).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import idle  # noqa: E402
from tests.support.netns import ns_exec  # noqa: E402
from tests.support.pathchain import linear_chain  # noqa: E402
from tests.support.require import require_binary  # noqa: E402

ROUTERS = 7  # + the server: 8 hops
IN_AGENT = """
import asyncio, json, sys, time
from agents.path.probe import PathSettings, module_for, trace_path
from agents.resources import ProbeResources
from foundation.config.types import Duration

server, count, interval, traces = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
module = module_for(PathSettings(count=count, packet_interval=Duration(interval), max_hops=8))

async def main():
    resources = ProbeResources()
    await trace_path(server, module, resources)  # warm-up: sockets, imports on first use
    spent, probes, answered = [], 0, 0
    for _ in range(traces):
        before = time.process_time()  # user + system, in ns steps (os.times() has 10 ms ones)
        report = await trace_path(server, module, resources)
        spent.append(time.process_time() - before)
        probes += sum(hop.sent for hop in report.hops)
        answered += sum(hop.received for hop in report.hops)
    resources.close()
    print(json.dumps({"cpu": spent, "probes": probes, "answered": answered}))

asyncio.run(main())
"""


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_counted(ns: str, argv: list[str]) -> tuple[float, str]:
    """CPU seconds of the command (and the children it waited for), and its output."""
    before = children_cpu()
    done = ns_exec(ns, argv, cwd=ROOT, timeout=300)
    spent = children_cpu() - before
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{argv[0]} failed: {done.stderr}")
    return spent, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=10)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    load = idle.start()
    mtr = require_binary_or_exit("mtr")
    with linear_chain(ROUTERS) as chain:
        mtr_argv = [mtr, "-n", "--report", "-c", str(args.count), "-i", str(args.interval), "-m", "8", chain.server_ip]
        mtr_cpu = [run_counted(chain.agency, mtr_argv)[0] for _ in range(args.traces)]
        in_agent = run_counted(chain.agency, [sys.executable, "-c", IN_AGENT, chain.server_ip, str(args.count),
                                              str(args.interval), str(args.traces)])[1]
        ours = json.loads(in_agent)
        cli_argv = [sys.executable, "-m", "agents.cli", "trace", chain.server_ip, "--count", str(args.count),
                    "--interval", str(args.interval), "--max-hops", "8", "--json"]
        cli_cpu, cli_out = run_counted(chain.agency, cli_argv)
    mtr_per_trace = sum(mtr_cpu) / len(mtr_cpu)
    ours_per_trace = sum(ours["cpu"]) / len(ours["cpu"])
    print(f"path: {ROUTERS + 1} hops, {args.count} probes per hop, {args.interval:g} s between cycles, {args.traces} traces each")
    print(f"  mtr --report                     {mtr_per_trace * 1000:8.2f} ms CPU per trace (whole process)")
    print(f"  netmon-agent path prober         {ours_per_trace * 1000:8.2f} ms CPU per trace (inside the agent; "
          f"{ours['answered']}/{ours['probes']} probes answered)")
    print(f"  netmon-agent trace (CLI)         {cli_cpu * 1000:8.2f} ms CPU for one trace, interpreter start included "
          f"(reached: {json.loads(cli_out)['reached']})")
    print(idle.ratio_line("  ratio agent / mtr, CPU per trace", ours_per_trace / mtr_per_trace, load))
    return 0


def require_binary_or_exit(name: str) -> str:
    try:
        return require_binary(name, "mtr-tiny")
    except BaseException:  # pytest.fail outside pytest: say it plainly
        sys.exit(f"{name} is not installed: apt-get install mtr-tiny")


if __name__ == "__main__":
    sys.exit(main())
