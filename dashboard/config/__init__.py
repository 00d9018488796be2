"""Configuration: YAML -> pydantic models, `${VAR}` substitution, and errors with file:line.

`schema` holds the models (the one source of truth), `source` reads YAML with the line of every
value, `validate` turns both into a `Config` or a ConfigError listing every problem. Nothing here
imports the layers above: boards are laid out by `dashboard.web.boards`, models routed by
`dashboard.relay.routing`. Validation does load the plugins a config names (feed types, a
provider's dialect, through `dashboard.plugins`), so that one that does not load is reported with
its line.
"""

from dashboard.config.schema import (
    NAME_PATTERN,
    TOPIC_NAME,
    AIConfig,
    AIPrices,
    AIProvider,
    AIRetries,
    AISimulation,
    AITimeouts,
    AlertRule,
    APIKey,
    AuthConfig,
    BrokerConfig,
    Config,
    DashboardConfig,
    PanelConfig,
    ServerConfig,
    Strict,
    SupervisorConfig,
    TopicConfig,
    ViewersConfig,
    WebhookConfig,
)
from dashboard.config.source import DEFAULT_CONFIG, MAX_NODES, read_config
from dashboard.config.validate import load_config, parse_config

__all__ = [
    "DEFAULT_CONFIG",
    "MAX_NODES",
    "NAME_PATTERN",
    "TOPIC_NAME",
    "AIConfig",
    "AIPrices",
    "AIProvider",
    "AIRetries",
    "AISimulation",
    "AITimeouts",
    "APIKey",
    "AlertRule",
    "AuthConfig",
    "BrokerConfig",
    "Config",
    "DashboardConfig",
    "PanelConfig",
    "ServerConfig",
    "Strict",
    "SupervisorConfig",
    "TopicConfig",
    "ViewersConfig",
    "WebhookConfig",
    "load_config",
    "parse_config",
    "read_config",
]
