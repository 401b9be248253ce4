"""Register maps as data: built-in maps for common meters, and operators' own map files.

A map (TOML) names, per canonical metric, the register's 0-based protocol address, its
type (holding or input), data type, word and byte order, scale and unit, and whether it is
a counter. :func:`load_register_map` validates a map on load; :class:`ReadPlan` groups the
registers a device needs into reads and decodes what they return.
"""

from edge.registermaps.errors import MissingMetricsError, RegisterMapError
from edge.registermaps.loader import builtin_map_names, load_register_map
from edge.registermaps.model import MetricRegister, RegisterMap
from edge.registermaps.plan import DecodedValue, DecodeProblem, ReadBlock, ReadPlan, encode_raw

__all__ = [
    "DecodeProblem",
    "DecodedValue",
    "MetricRegister",
    "MissingMetricsError",
    "ReadBlock",
    "ReadPlan",
    "RegisterMap",
    "RegisterMapError",
    "builtin_map_names",
    "encode_raw",
    "load_register_map",
]
