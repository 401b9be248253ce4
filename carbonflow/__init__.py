"""CarbonFlow: real-time factory energy and greenhouse-gas emissions monitoring."""

__version__ = "0.1.0"
