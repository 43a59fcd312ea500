"""Agent configuration: parsed once, validated once, immutable afterwards.

This package knows the agent's own keys; the entry points that read a file with every prober and section
registered (`load_config`, `parse_config`) are in agents/catalog.py.
"""

from agents.config.model import AgentConfig, ModuleConfig, Target
from foundation.config.base import ConfigError

__all__ = ["AgentConfig", "ConfigError", "ModuleConfig", "Target"]
