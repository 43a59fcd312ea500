"""netmon-agent: run the agent, check a config, run every probe once, or trace a path from the shell."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Sequence

from agents.catalog import PROBERS
from agents.config import AgentConfig, ConfigError
from agents.fleet import LoadedConfig, load_at_start
from agents.results import ProbeResult
from agents.served_check import run as check_served
from foundation import __version__
from foundation.config.base import listen_argument
from foundation.logs import protect_secrets, setup_logging

EXIT_OK, EXIT_PROBE_FAILED, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netmon-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"netmon-agent {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", default="text", choices=["text", "json"])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="probe on schedule and serve /metrics until SIGTERM")
    run.add_argument("--config", required=True, help="agent YAML config file")
    run.add_argument("--listen", type=listen_argument(9855), help="HOST:PORT, overrides the config's listen")
    check = commands.add_parser("check-config", help="validate a config file (exit 0 valid, 2 invalid)")
    check.add_argument("config")
    probe = commands.add_parser("probe", help="run probes once and print the results")
    probe.add_argument("--config", required=True)
    probe.add_argument("--once", action="store_true", required=True, help="run each target's probe once")
    probe.add_argument("--target", action="append", help="only this target (repeatable)")
    probe.add_argument("--json", action="store_true", help="print JSON instead of a table")
    probe.add_argument(
        "--parallel", action="store_true",
        help="run all targets at once (up to max_concurrent_probes): faster for many targets, but each one's "
        "timings then include the others' work on the shared event loop",
    )
    trace = commands.add_parser("trace", help="trace the path to ADDRESS hop by hop, like mtr --report (no config)")
    trace.add_argument("address")
    trace.add_argument("--count", type=int, default=10, help="probes per hop (default 10)")
    trace.add_argument("--max-hops", type=int, default=30, help="highest TTL (default 30)")
    trace.add_argument("--interval", type=float, default=1.0, help="seconds between two cycles over the hops (default 1)")
    trace.add_argument("--protocol", choices=["icmp", "udp", "tcp"], default="icmp")
    trace.add_argument("--port", type=int, help="udp (default 33434) or tcp destination port")
    trace.add_argument("--ip", choices=["ip4", "ip6"], default="ip4", help="preferred address family of a name")
    trace.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    commands.add_parser(
        "check-served", help="check the configs a collector serves, JSON on stdin and stdout (run by netmon-collector)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check-served":
        return check_served(sys.stdin.buffer, sys.stdout.buffer)
    setup_logging(args.log_level, args.log_format)
    if args.command == "trace":
        return _trace(args)
    config_path = args.config
    try:
        # with `fleet:`, merged with the cached served config if any (`run` fetches it when it must)
        loaded = load_at_start(config_path, fetch_when_needed=args.command == "run")
    except ConfigError as exc:
        print("\n".join(f"config error: {one}" for one in exc.each()), file=sys.stderr)
        return EXIT_CONFIG
    config = loaded.config
    protect_secrets(config)  # mask its secrets' values in every log line (foundation/logs.py)
    unsupported = unsupported_here(config)
    if unsupported:
        print("\n".join(f"config error: {config_path}: {problem}" for problem in unsupported), file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        served = f", with served config {loaded.served.hash} from the cache" if loaded.served else ""
        print(f"{config_path}: OK ({len(config.modules)} modules, {len(config.targets)} targets{served})")
        return EXIT_OK
    if args.command == "probe":
        return asyncio.run(_probe_once(config, args.target, args.json, args.parallel))
    return _run(loaded, config_path, args.listen)


def _run(loaded: LoadedConfig, config_path: str, listen: tuple[str, int] | None) -> int:
    from agents.app import Agent  # the server stack is only needed by `run`

    async def main_loop() -> None:
        await Agent(loaded.config, config_path, listen, loaded.served, loaded.local_hash).run_until_stopped()

    try:
        asyncio.run(main_loop())
    except OSError as exc:
        print(f"netmon-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Windows: how a service wrapper stops the agent (the agent has stopped by now)
        pass
    return EXIT_OK


def unsupported_here(config: AgentConfig, platform: str = sys.platform) -> list[str]:
    """What the config asks for that this operating system cannot do (docs/windows.md), as `key: reason`."""
    problems = []
    if not platform.startswith("linux"):
        problems += [
            f"modules.{module.name}.prober: {module.prober} needs Linux (datagram ICMP sockets, SO_TIMESTAMPNS, "
            "MSG_ERRQUEUE); probe this host with tcp or http here"
            for module in config.modules.values()
            if module.prober in ("icmp", "path")
        ]
    if platform == "win32" and config.push is not None:
        problems.append(
            "push: the durable push queue needs flock and directory fsync, which Windows lacks; "
            "let the collector scrape this agent (mode: pull)"
        )
    return problems


async def _probe_once(config: AgentConfig, names: list[str] | None, as_json: bool, parallel: bool = False) -> int:
    from agents.resources import ProbeResources
    from agents.runner import prepare_modules, run_target

    targets = list(config.targets)
    if names:
        unknown = sorted(set(names) - {t.name for t in targets})
        if unknown:
            print(f"unknown or disabled target(s): {', '.join(unknown)}", file=sys.stderr)
            return EXIT_CONFIG
        targets = [t for t in targets if t.name in names]
    resources = ProbeResources()
    prepare_modules(targets, resources)
    # one at a time by default: a probe's timed phases then hold its own work only, as when it runs alone
    limit = asyncio.Semaphore(config.max_concurrent_probes if parallel else 1)

    async def one(target):
        async with limit:
            return await run_target(target, resources)

    try:
        results = await asyncio.gather(*(one(t) for t in targets))
    finally:
        resources.close()
    pairs = list(zip(targets, results))
    print(json.dumps(_as_json(pairs), ensure_ascii=False, indent=2) if as_json else _as_table(pairs))
    return EXIT_OK if all(r.success for r in results) else EXIT_PROBE_FAILED


def _trace(args: argparse.Namespace) -> int:
    """exit 0: the destination answered; 1: it did not; 2: bad arguments or no socket."""
    from agents.path.probe import PathSettings, TraceError, module_for, trace_path
    from agents.path.report import report_json, report_table
    from agents.resources import ProbeResources
    from foundation.config.types import Duration

    settings = PathSettings(
        protocol=args.protocol, port=args.port, count=args.count, max_hops=args.max_hops,
        packet_interval=Duration(args.interval),
    )
    try:
        module = module_for(settings, args.ip)
    except ValueError as exc:
        print(f"netmon-agent trace: {exc}", file=sys.stderr)
        return EXIT_CONFIG

    async def run():
        resources = ProbeResources()
        try:
            return await trace_path(args.address, module, resources)
        finally:
            resources.close()

    try:
        report = asyncio.run(run())
    except TraceError as exc:
        print(f"netmon-agent trace: {exc.failure}: {exc.detail}", file=sys.stderr)
        return EXIT_CONFIG
    print(json.dumps(report_json(report), ensure_ascii=False, indent=2) if args.json else report_table(report))
    return EXIT_OK if report.reached else EXIT_PROBE_FAILED


def _sample_json(sample) -> dict:
    entry = {"name": sample.metric.name, "labels": dict(sample.labels), "value": sample.value}
    if sample.metric.kind == "histogram":
        entry["observations"] = list(sample.observations)
    return entry


def _as_json(pairs: list[tuple[object, ProbeResult]]) -> dict:
    return {
        "results": [
            {
                "target": target.name,
                "module": target.module.name,
                "address": target.address,
                "success": result.success,
                "duration_seconds": round(result.duration_seconds, 6),
                "failure": result.failure.value if result.failure else None,
                "detail": result.detail,
                "samples": [_sample_json(s) for s in result.samples],
            }
            for target, result in pairs
        ]
    }


def _as_table(pairs: list[tuple[object, ProbeResult]]) -> str:
    header = ("TARGET", "MODULE", "ADDRESS", "RESULT", "TIME", "DETAIL")
    rows = [header] + [
        (
            t.name,
            t.module.name,
            t.address,
            "ok" if r.success else f"FAIL {r.failure.value if r.failure else ''}",
            f"{r.duration_seconds * 1000:.1f}ms",
            r.detail,
        )
        for t, r in pairs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    for target, result in pairs:
        more = PROBERS[target.module.prober].result_lines
        if more is not None:  # e.g. a transaction's steps
            lines += ["", f"{target.name}:", *(f"  {line}" for line in more(target.module, result))]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
