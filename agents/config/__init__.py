"""Agent configuration: parsed once, validated once, immutable afterwards."""

from agents.config.loader import ConfigError, load_config, parse_config
from agents.config.model import AgentConfig, ModuleConfig, Target

__all__ = ["AgentConfig", "ConfigError", "ModuleConfig", "Target", "load_config", "parse_config"]
