"""Run the fuzz targets under atheris (coverage-guided, libFuzzer) and print executions and findings per target.

    python -m tests.fuzz.run --runs 2000                # every target, a fixed number of executions (CI)
    nice -n 19 python -m tests.fuzz.run --time 600 snmp # one target for ten minutes
    python -m tests.fuzz.run --runs 1000000 --jobs 2    # the long run of docs/fuzzing.md

Each target runs in its own process (atheris instruments the modules it names, then libFuzzer takes over) with
its seeds and a growing corpus under tmp/fuzz/corpus/TARGET. The contract beyond `check`: an input that takes
more than --input-timeout seconds, or a process above --rss-mb, is a finding too. An input that found something is
saved under tmp/fuzz/findings/TARGET/; copy it to tests/fuzz/regressions/TARGET/ with the fix.
Exit status: 0 when no target found anything.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# target -> the modules whose coverage guides it (tests/fuzz/fuzz_TARGET.py holds its check and seeds)
TARGETS = {
    "snmp": ["agents.snmp.ber", "agents.snmp.usm"],
    "http_request": ["foundation.httpserver"],
    "http_response": ["foundation.httpclient"],
    "http_probe": ["agents.probes.http"],
    "smtp": ["agents.probes.smtp", "agents.probes.mailproto"],
    "imap": ["agents.probes.imap", "agents.probes.mailproto"],
    "pop3": ["agents.probes.pop3", "agents.probes.mailproto"],
    "remote_write": ["foundation.remote_write"],
    "text": ["collector.scrape", "prometheus_client.parser"],
    "config": ["agents.catalog", "agents.config", "foundation.config", "collector.config", "yaml"],
    "x509": ["agents.probes.x509fields"],
}
MAX_LEN = 8192  # bytes per input: enough for every structure the parsers know; large inputs have their own tests


@dataclass
class Result:
    target: str
    executions: int
    seconds: float
    findings: list[Path]
    output: str

    @property
    def ok(self) -> bool:
        return not self.findings and "Done " in self.output


def module_of(target: str):
    return importlib.import_module(f"tests.fuzz.fuzz_{target}")


def child(target: str, libfuzzer_args: list[str]) -> None:
    """In the fuzzing process: instrument the target's code, write its seeds, hand over to libFuzzer."""
    import atheris

    with atheris.instrument_imports(include=TARGETS[target]):
        module = module_of(target)

    def one(data: bytes) -> None:
        module.check(data)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


def write_seeds(target: str, directory: Path) -> list[str]:
    """The target's seeds as files, and its dictionary (tokens the mutator splices in) as libFuzzer's -dict."""
    directory.mkdir(parents=True, exist_ok=True)
    module = module_of(target)
    for index, seed in enumerate(module.seeds()):
        (directory / f"seed-{index}").write_bytes(seed)
    tokens = getattr(module, "DICTIONARY", [])
    if not tokens:
        return []
    dictionary = directory.parent / f"{target}.dict"
    dictionary.write_text("".join('"' + "".join(f"\\x{byte:02x}" for byte in token) + '"\n' for token in tokens))
    return [f"-dict={dictionary}"]


def fuzz(target: str, args: argparse.Namespace) -> Result:
    work = ROOT / "tmp" / "fuzz"
    corpus = Path(args.corpus) / target if args.corpus else work / "corpus" / target
    seeds, findings = work / "seeds" / target, work / "findings" / target
    for directory in (corpus, findings):
        directory.mkdir(parents=True, exist_ok=True)
    dictionary = write_seeds(target, seeds)
    before = set(findings.iterdir())
    limit = [f"-runs={args.runs}"] if args.runs else [f"-max_total_time={args.time}"]
    command = [
        sys.executable, "-m", "tests.fuzz.run", "--child", target, "--",
        str(corpus), str(seeds), *limit, f"-timeout={args.input_timeout}", f"-rss_limit_mb={args.rss_mb}",
        f"-max_len={MAX_LEN}", f"-artifact_prefix={findings}/", "-print_final_stats=1", f"-seed={args.seed}", *dictionary,
    ]
    started = time.monotonic()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, errors="replace")
    seconds = time.monotonic() - started
    output = out.stdout + out.stderr
    (work / f"{target}.log").write_text(output)
    executions = max([int(n) for n in re.findall(r"^#(\d+)\s", output, re.MULTILINE)] or [0])
    done = re.search(r"Done (\d+) runs", output)
    if done:
        executions = int(done.group(1))
    return Result(target, executions, seconds, sorted(set(findings.iterdir()) - before), output)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1], argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", choices=[[], *TARGETS], default=[], metavar="TARGET", help=f"some of {', '.join(TARGETS)} (default all)")
    limit = parser.add_mutually_exclusive_group(required=True)
    limit.add_argument("--runs", type=int, help="executions per target")
    limit.add_argument("--time", type=int, help="seconds per target")
    parser.add_argument("--jobs", type=int, default=1, help="targets fuzzed at once")
    parser.add_argument("--input-timeout", type=int, default=5, help="seconds one input may take")
    parser.add_argument("--rss-mb", type=int, default=1024, help="memory the fuzzing process may reach")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed (fixed: CI runs are repeatable)")
    parser.add_argument("--corpus", help="where the growing corpus lives (default tmp/fuzz/corpus; a fresh one: from the seeds only)")
    args = parser.parse_args(argv)
    targets = args.targets or list(TARGETS)
    print(f"{'target':<14} {'executions':>12} {'seconds':>9} {'exec/s':>8}  findings", flush=True)
    failed = False
    with ThreadPoolExecutor(args.jobs) as pool:
        for result in pool.map(lambda target: fuzz(target, args), targets):
            rate = result.executions / result.seconds if result.seconds else 0
            found = ", ".join(str(path.relative_to(ROOT)) for path in result.findings) or ("0" if result.ok else "did not finish")
            print(f"{result.target:<14} {result.executions:>12} {result.seconds:>9.1f} {rate:>8.0f}  {found}", flush=True)
            if not result.ok:
                failed = True
                print(_tail(result.output), file=sys.stderr)
    return 1 if failed else 0


def _tail(output: str, lines: int = 40) -> str:
    return "\n".join(output.splitlines()[-lines:])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
