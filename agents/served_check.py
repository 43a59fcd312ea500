"""`netmon-agent check-served`: the configs a collector is about to serve, checked by this agent's own loader.

The collector runs this once per load of its config for all its agents (docs/fleet.md), so that an invalid
rendered template is never served, without importing any agent code. Secret and file references are checked by
form only: they are resolved on the agent that receives the config.
"""

from __future__ import annotations

import sys
from typing import Any, BinaryIO

from agents.catalog import config_from_sections
from foundation.config.base import ConfigContext, ConfigError, unresolved_references_hook
from foundation.config.yamlpos import PositionedData
from foundation.fleet_protocol import Rejection, decode_check_request, encode_check_results

EXIT_OK, EXIT_BAD_REQUEST = 0, 2


def check_served(configs: dict[str, dict[str, Any]]) -> dict[str, Rejection | None]:
    """Agent id -> None if its loader accepts the sections (identity included), else why not."""
    return {agent_id: _rejection(agent_id, sections) for agent_id, sections in configs.items()}


def _rejection(agent_id: str, sections: dict[str, Any]) -> Rejection | None:
    ctx = ConfigContext(f"config served to agent {agent_id}", PositionedData(None), unresolved_references_hook)
    try:
        config_from_sections(ctx, sections)
    except ConfigError as exc:
        return Rejection(exc.path, exc.message)
    return None


def run(requests: BinaryIO, answers: BinaryIO) -> int:
    """Read the configs (JSON, foundation/fleet_protocol.py) and write the verdicts."""
    try:
        configs = decode_check_request(requests.read())
    except ValueError as exc:
        print(f"check-served: the request is not a JSON object of agent id -> config sections: {exc}", file=sys.stderr)
        return EXIT_BAD_REQUEST
    answers.write(encode_check_results(check_served(configs)))
    answers.flush()
    return EXIT_OK
