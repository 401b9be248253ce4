"""The CarbonFlow REST API: registry, readings and energy per device, over TimescaleDB."""
