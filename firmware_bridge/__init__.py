"""Serial protocol and MCU <-> MQTT bridge. Not built yet: see issue 6."""
