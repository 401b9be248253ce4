"""The root of every error CarbonFlow raises on purpose.

Library errors (psycopg, aiokafka, paho, subprocess) are translated into these with
``raise ... from exc`` at the adapter that met them, so callers catch one family.
"""


class CarbonFlowError(Exception):
    """Base class for all CarbonFlow errors."""


class StackError(CarbonFlowError):
    """A local service could not be installed, started, probed or stopped."""


class ServiceUnavailableError(CarbonFlowError):
    """A backing service (database, broker) is not reachable."""


class CredentialError(CarbonFlowError):
    """An MQTT identity could not be issued, revoked or applied to the broker."""


class RegistryError(CarbonFlowError):
    """A registry entry (site, asset, device) was refused: unknown parent, clash, bad value."""
