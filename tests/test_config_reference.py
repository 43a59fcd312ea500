"""docs/reference/*.md is generated from the config schema (scripts/gen-config-reference) and must be current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "scripts" / "gen-config-reference"
COMMITTED = ROOT / "docs" / "reference"
REFERENCES = ["agent.md", "collector.md"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    result = subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("name", REFERENCES)
def test_committed_reference_matches_the_config_schema(generated, name):
    assert (generated / name).read_text(encoding="utf-8") == (COMMITTED / name).read_text(encoding="utf-8"), (
        f"docs/reference/{name} is out of date with the config schema; regenerate it with:\n"
        f"    .venv/bin/python scripts/gen-config-reference\nand commit the result"
    )


def test_a_row_carries_key_type_default_and_the_fields_source_comment(generated):
    text = (generated / "agent.md").read_text(encoding="utf-8")
    assert (
        "| `interval` | duration (`500ms`, `15s`, `1h30m`) | `5s` | how long samples may wait to be sent together |"
        in text.split("### `push` (PushConfig)")[1]
    )
    assert "| `agent` | [AgentIdentity](#agentidentity) | **required** |" in text


def test_every_prober_configurable_as_a_module_has_a_section(generated):
    from agents.catalog import PROBERS

    text = (generated / "agent.md").read_text(encoding="utf-8")
    for name in set(PROBERS) - {"snmp", "ssh"}:  # those two are configured by snmp_devices and ssh_checks
        assert f"Chosen with `prober: {name}`." in text, name


def test_every_ssh_fixed_command_has_a_row_with_the_line_it_sends(generated):
    from agents.ssh.commands import FIXED_COMMANDS

    text = (generated / "agent.md").read_text(encoding="utf-8").split("## SSH fixed commands")[1]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1].split()[0] for row in rows[: len(FIXED_COMMANDS)]] == list(FIXED_COMMANDS)
    assert "| `df /var /` | `df -P -- /var /` | `df` |" in text


def test_the_ssh_page_names_every_fixed_command_with_its_argument_form():
    from agents.ssh.commands import FIXED_COMMANDS

    page = " ".join((ROOT / "docs" / "ssh.md").read_text(encoding="utf-8").split())  # rewrapped lines read as one
    assert [name for name, command in FIXED_COMMANDS.items() if f"`{name} {command.usage}`" not in page] == []


def test_every_failure_reason_has_a_row_that_says_what_it_means(generated):
    from agents.catalog import failure_reasons

    text = (generated / "agent.md").read_text(encoding="utf-8").split("## Failure reasons")[1]
    rows = {line.split("`")[1]: line for line in text.splitlines() if line.startswith("| `")}
    assert list(rows) == list(failure_reasons())
    assert [reason for reason, row in rows.items() if row.endswith("|  |")] == [], "a reason without a comment in its set"
    assert rows["port_open"] == "| `port_open` | `tcp` | must_be_closed, and the port accepted the connection |"
