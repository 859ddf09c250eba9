"""Constants of the Home Security Intelligence integration."""

from __future__ import annotations

from datetime import timedelta
from typing import Final

DOMAIN: Final = "home_security_intelligence"

CONF_API_KEY: Final = "api_key"
CONF_URL: Final = "url"
CONF_PREFIX: Final = "prefix"
CONF_SERVER_ID: Final = "server_id"

# Options: the Home Assistant entities forwarded to the server as household context.
CONF_ALARM_ENTITY: Final = "alarm_entity"
CONF_PRESENCE_ENTITIES: Final = "presence_entities"
CONF_ENTRY_ENTITIES: Final = "entry_entities"
CONF_SUN_ENTITY: Final = "sun_entity"

DEFAULT_PREFIX: Final = "hsi"
RISK_LEVELS: Final = ["low", "medium", "high", "critical"]
CATEGORIES: Final = ["person", "vehicle", "animal"]

#: How long the server may be offline (its MQTT will) before a repairs issue is raised.
UNREACHABLE_ISSUE_AFTER: Final = timedelta(minutes=10)
ISSUE_UNREACHABLE: Final = "server_unreachable_{}"
#: Raised while the server reports its detector model missing (``hsi/status``), one per entry.
ISSUE_MODEL_MISSING: Final = "detector_model_missing_{}"
#: An MQTT discovery announced another URL for a configured server: the user must confirm it.
ISSUE_DISCOVERED_URL: Final = "discovered_url_{}"

EVENT_BUS: Final = f"{DOMAIN}_event"
SIGNAL_NEW_CAMERA: Final = f"{DOMAIN}_new_camera_{{}}"
