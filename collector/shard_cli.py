"""`netmon-collector shard`: one inventory in, one collector config per shard out (collector/shard.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from collector.shard import write_shards
from foundation.config.base import ConfigError

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def add_shard_command(commands: argparse._SubParsersAction) -> None:
    shard = commands.add_parser(
        "shard", help="split one inventory into N collector configs (no agency in two), with the shard map and a Prometheus scrape job",
    )
    shard.add_argument("--inventory", required=True, help="the collector YAML config holding every agency")
    shard.add_argument("--shards", type=int, required=True, help="how many shards")
    shard.add_argument("--by", choices=["hash", "district"], default="hash",
                       help="hash: rendezvous hash of the agency id (adding a shard moves ~1/N agencies); district: whole districts, balanced by agents")
    shard.add_argument("--url", action="append", default=[],
                       help="base URL of each shard in order (repeat N times), e.g. http://10.0.0.11:9856; default http://shard-N:PORT")
    shard.add_argument("--out", required=True, help="directory for shard-N.yml, shards.yml and prometheus-shards.yml")


def run_shard_command(args: argparse.Namespace) -> int:
    try:
        written = write_shards(args.inventory, args.shards, args.by, Path(args.out), args.url)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ValueError as exc:
        print(f"netmon-collector shard: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for shard in written.shards:
        print(f"{shard.name}: {len(shard.agencies)} agencies, {shard.url}")
    print(f"wrote {', '.join(str(path) for path in written.files)}")
    return EXIT_OK
