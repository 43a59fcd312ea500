"""Config files (agents/catalog.py, agents/config, collector/config.py, foundation/config: YAML with lines kept, then msgspec): whatever
an operator writes, or a collector serves, loading raises only ConfigError, within the time and memory bounds
(YAML aliases included). `*_file` keys and certificate paths are checked by form only here: a fuzzer must not read
this machine's files."""

from __future__ import annotations

import contextlib

from agents.catalog import parse_config
from collector.config import parse_collector_config
from foundation.config import types
from foundation.config.base import ConfigError


def _form_only(text):
    if not isinstance(text, str) or not text:
        raise ValueError("expected a file path")
    return types.SecretFile("x" * 32, f"file:{text}")


@contextlib.contextmanager
def _paths_checked_by_form_only():
    """Only while a fuzz input is parsed: the test process runs other tests after this one, which read real files."""
    saved = {kind: types._PARSERS[kind] for kind in (types.SecretFile, types.FilePath)}
    types._PARSERS[types.SecretFile] = _form_only
    types._PARSERS[types.FilePath] = lambda text: _form_only(text) and types.FilePath(text)
    try:
        yield
    finally:
        types._PARSERS.update(saved)


def check(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # read_config_file refuses it as ConfigError before parsing
    with _paths_checked_by_form_only():
        for parse in (parse_config, parse_collector_config):
            try:
                parse(text)
            except ConfigError:
                pass


def seeds() -> list[bytes]:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "config"
    texts = [path.read_bytes() for path in (root / "agent.example.yml", root / "collector.example.yml") if path.exists()]
    return texts + [b"a: &a [1, 2]\nb: [*a, *a]\nc: {<<: {x: 1}, y: 2}\n", b"agent: {id: x, agency: y}\n"]
