"""Errors the edge raises on purpose.

paho-mqtt and socket errors are translated into these with ``raise ... from exc`` at the
adapter that met them, so callers catch one family. ``EdgeError`` is a ``CarbonFlowError``,
so code that catches the whole platform's family catches these too.
"""

from carbonflow.errors import CarbonFlowError


class EdgeError(CarbonFlowError):
    """Base class for all edge errors."""


class BrokerConnectionError(EdgeError):
    """The MQTT broker could not be reached or refused the connection."""


class PublishError(EdgeError):
    """A batch was not accepted, or its acknowledgement did not arrive in time."""
