"""Typed configuration: the YAML files in this folder and the schema that validates them."""

from configs.base import ConfigError
from configs.schema import Config, load_config

__all__ = ["Config", "ConfigError", "load_config"]
