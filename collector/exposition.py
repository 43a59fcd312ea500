"""The collector's one /metrics page: its own families (prometheus_client) and the agents' series.

Agents push families the collector has too (`process_*`, `python_*` of their own process). A name may head
only one family on a page (promtool and Prometheus' parsers refuse a second HELP/TYPE for it), so an agent's
series whose name belongs to one of the collector's own families are written inside that family, after the
collector's own samples; the identity labels keep them apart."""

from __future__ import annotations

# remote_write 1.0 carries no HELP/TYPE: agents' other families are untyped, with a HELP line so linters accept the page
AGENT_SERIES_HELP = "Series of netmon agents, with identity labels from the collector's inventory"


def sample_name(line: str) -> str:
    end = len(line)
    for separator in ("{", " "):
        found = line.find(separator)
        if found != -1:
            end = min(end, found)
    return line[:end]


def page(own: str, groups: dict[str, list[str]]) -> str:
    """`own` exposition text with the agents' lines (by sample name) merged in, then the other agents' families."""
    out: list[str] = []
    pending = dict(groups)
    block_names: list[str] = []

    def close_block() -> None:
        for name in block_names:
            lines = pending.pop(name, None)
            if lines:
                out.append("\n".join(lines) + "\n")
        block_names.clear()

    for line in own.splitlines():
        if line.startswith("# HELP "):
            close_block()
            block_names.append(sample_name(line[7:]))  # a family without samples yet still owns its name
        elif line and not line.startswith("#"):
            name = sample_name(line)
            if not block_names or block_names[-1] != name:
                block_names.append(name)
        out.append(line + "\n")
    close_block()
    out.extend(f"# HELP {name} {AGENT_SERIES_HELP}\n" + "\n".join(lines) + "\n" for name, lines in pending.items())
    return "".join(out)
