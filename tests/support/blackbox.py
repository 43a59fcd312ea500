"""The real blackbox_exporter (Debian's prometheus-blackbox-exporter), for probing the same target as the agent
and comparing what both report under blackbox's metric names."""

from __future__ import annotations

import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from tests.support.ports import free_port
from tests.support.procs import running, wait_for_port
from tests.support.require import require_binary

Probe = Callable[[str, str], dict[str, float]]  # (module, target) -> {series: value}


@contextmanager
def running_blackbox(directory: Path, modules_yaml: str) -> Iterator[Probe]:
    """blackbox_exporter with `modules:` of this YAML text, on 127.0.0.1; yields a function that runs /probe."""
    binary = require_binary("prometheus-blackbox-exporter")
    config = directory / "blackbox.yml"
    config.write_text(modules_yaml, encoding="utf-8")
    port = free_port()
    argv = [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"]
    with running(argv, log_path=str(directory / "blackbox.log")) as proc:
        wait_for_port("127.0.0.1", port, proc=proc)

        def probe(module: str, target: str) -> dict[str, float]:
            query = urllib.parse.urlencode({"module": module, "target": target})
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/probe?{query}", timeout=10) as response:
                return parse_samples(response.read().decode())

        yield probe


def parse_samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples
