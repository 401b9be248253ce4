"""The gateway's configuration file (TOML), validated so every problem names its field.

A gateway reads one file at start-up: who it is, which broker it talks to, where it buffers
readings while the broker is away, how it batches them, and which meters it polls. The file
never holds a secret: the broker password comes from an environment variable or a file the
operator names, read through :meth:`BrokerSettings.read_password` by the entry point.

Relative paths in the file are relative to the file itself, so a config directory can be
moved as a whole. Errors read ``devices[2].poll_interval_s: must be greater than 0``; list
indexes count from 0 in file order.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from edge.errors import EdgeError
from edge.registermaps import RegisterMapError, load_register_map
from edge.registermaps.units import conversion, source_units
from edge.simulator.factory import MachineKind
from edge.tables import Loc, StrictTable, format_problems, plain_message, rule_error
from schemas.telemetry import IDENTIFIER_PATTERN, METRIC_UNITS, Identifier

__all__ = [
    "MAX_BATCH_READINGS",
    "PROTOCOLS",
    "BackoffSettings",
    "BrokerSettings",
    "BufferSettings",
    "ConfigFileError",
    "DeviceConfig",
    "GatewayConfig",
    "ModbusTcpDevice",
    "OpcUaDevice",
    "PublishSettings",
    "SecretUnavailableError",
    "SimulatedDevice",
    "TlsSettings",
    "format_validation_error",
    "load_config",
]

#: The telemetry contract's limit on readings per batch (``TelemetryBatch.readings``).
MAX_BATCH_READINGS: Final = 10_000
PROTOCOLS: Final = ("simulated", "modbus_tcp", "opcua")

_ENV_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A topic prefix: no wildcards, no empty levels, no leading or trailing slash.
_TOPIC_ROOT_PATTERN: Final = r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
# OPC UA node id in its string form, e.g. "ns=3;s=Meter1.ActivePower" or "i=2258".
_NODE_ID_PATTERN: Final = (
    r"^(ns=\d+;|nsu=[^;]+;)?"
    r"(i=\d{1,10}|s=.+|g=[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}|b=.+)$"
)
_HOST_PATTERN: Final = r"^[^\s/:]+$|^\[[0-9A-Fa-f:.]+\]$"
_REGISTER_MAP_SUFFIXES: Final = frozenset({".toml", ".json", ".csv"})
_REDACTED: Final = "<redacted>"


class ConfigFileError(EdgeError):
    """The gateway config file is missing, unreadable, not TOML, or not a valid config."""

    def __init__(self, source: Path, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"invalid gateway config {source}:\n{lines}")


class SecretUnavailableError(EdgeError):
    """The broker password named by the config could not be read."""


# --- paths -------------------------------------------------------------------------------


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    # Relative to the config file (passed as context by load_config), not to the cwd of
    # whatever service manager happened to start the gateway.
    context = info.context
    base = context.get("base_dir") if isinstance(context, Mapping) else None
    if isinstance(base, Path) and not value.is_absolute():
        return base / value
    return value


def _must_be_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
ExistingFile = Annotated[Path, AfterValidator(_resolve_path), AfterValidator(_must_be_file)]


def _known_metric(value: str) -> str:
    if value not in METRIC_UNITS:
        known = ", ".join(sorted(METRIC_UNITS))
        raise ValueError(f"unknown metric {value!r}; known metrics: {known}")
    return value


KnownMetric = Annotated[str, AfterValidator(_known_metric)]


def _non_empty(value: Any) -> Any:
    # Checked before the items: pydantic counts only valid items against a tuple's
    # min_length, which would add a bogus "too short" to every item error.
    if isinstance(value, list | tuple) and not value:
        raise ValueError("must list at least one entry")
    return value


NonEmpty = BeforeValidator(_non_empty)
PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]


# --- cross-field rules -------------------------------------------------------------------


# --- broker ------------------------------------------------------------------------------


class TlsSettings(StrictTable):
    """TLS to the broker. Without ``ca_file`` the system's trust store is used."""

    ca_file: ExistingFile | None = None
    cert_file: ExistingFile | None = None
    key_file: ExistingFile | None = None

    def _rule_problems(self) -> list[tuple[Loc, str, object]]:
        # A client certificate is useless without its key and vice versa.
        if self.cert_file is not None and self.key_file is None:
            return [(("key_file",), "required when cert_file is given", None)]
        if self.key_file is not None and self.cert_file is None:
            return [(("cert_file",), "required when key_file is given", None)]
        return []


class BrokerSettings(StrictTable):
    """The MQTT broker. The password is named here, never written here."""

    host: str = Field(min_length=1, max_length=253, pattern=_HOST_PATTERN)
    port: int = Field(default=1883, ge=1, le=65535)
    keepalive_s: int = Field(default=30, ge=5, le=65535)
    tls: TlsSettings | None = None
    username: str | None = Field(default=None, min_length=1)
    password_env: str | None = Field(default=None, pattern=_ENV_NAME_PATTERN)
    password_file: ExistingFile | None = None
    # Declared only to reject it with a helpful message instead of "unknown field".
    password: None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="before")
    @classmethod
    def _redact_inline_password(cls, data: Any) -> Any:
        # Replace the value before pydantic records it as the error's input, so the secret
        # never shows up in an exception or a log.
        if isinstance(data, Mapping) and "password" in data:
            return {**data, "password": _REDACTED}
        return data

    @field_validator("password", mode="before")
    @classmethod
    def _reject_inline_password(cls, value: object) -> None:
        if value is not None:
            raise ValueError(
                "a password must not be written in the config file; "
                "set password_env (an environment variable name) or password_file instead"
            )
        return None

    def _rule_problems(self) -> list[tuple[Loc, str, object]]:
        problems: list[tuple[Loc, str, object]] = []
        if self.password_env is not None and self.password_file is not None:
            problems.append(
                (("password_file",), "give password_env or password_file, not both", None)
            )
        if self.username is None and (self.password_env or self.password_file):
            problems.append((("username",), "required when a password is configured", None))
        return problems

    def read_password(self, environ: Mapping[str, str]) -> SecretStr | None:
        """The broker password, from ``environ`` or from the password file; None if unset."""
        if self.password_env is not None:
            value = environ.get(self.password_env)
            if not value:
                raise SecretUnavailableError(
                    f"broker.password_env: environment variable {self.password_env} is not set"
                    " or empty"
                )
            return SecretStr(value)
        if self.password_file is not None:
            try:
                text = self.password_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise SecretUnavailableError(
                    f"broker.password_file: cannot read {self.password_file}: {exc}"
                ) from exc
            # Editors and `echo` add a final newline that is not part of the secret.
            value = text.rstrip("\r\n")
            if not value:
                raise SecretUnavailableError(f"broker.password_file: {self.password_file} is empty")
            return SecretStr(value)
        return None


# --- buffering and publishing ------------------------------------------------------------


class BufferSettings(StrictTable):
    """The on-disk buffer that holds readings until the broker acknowledges them."""

    path: ConfigPath
    max_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    overflow_policy: Literal["drop_oldest", "reject_new"] = "drop_oldest"


class PublishSettings(StrictTable):
    batch_interval_s: PositiveSeconds = 5.0
    max_batch_readings: int = Field(default=1000, ge=1, le=MAX_BATCH_READINGS)


# --- devices -----------------------------------------------------------------------------


class BackoffSettings(StrictTable):
    """Retry delays after a failed poll: initial_s, doubling (by multiplier) up to max_s."""

    initial_s: PositiveSeconds = 1.0
    max_s: PositiveSeconds = 300.0
    multiplier: float = Field(default=2.0, ge=1.0, le=10.0)

    def _rule_problems(self) -> list[tuple[Loc, str, object]]:
        if self.initial_s > self.max_s:
            return [(("initial_s",), f"must be at most max_s ({self.max_s})", self.initial_s)]
        return []


class _DeviceBase(StrictTable):
    device_id: Identifier
    metrics: Annotated[tuple[KnownMetric, ...], NonEmpty]
    poll_interval_s: PositiveSeconds
    timeout_s: PositiveSeconds = 1.0
    backoff: BackoffSettings = BackoffSettings()

    def _rule_problems(self) -> list[tuple[Loc, str, object]]:
        problems: list[tuple[Loc, str, object]] = []
        seen: set[str] = set()
        for index, metric in enumerate(self.metrics):
            if metric in seen:
                problems.append((("metrics", index), f"{metric!r} is listed twice", metric))
            seen.add(metric)
        # A poll must give up before the next one is due, or polls pile up on a slow meter.
        if self.timeout_s >= self.poll_interval_s:
            hint = "" if "timeout_s" in self.model_fields_set else " (the default); set it"
            problems.append(
                (
                    ("timeout_s",),
                    f"must be less than poll_interval_s ({self.poll_interval_s}); "
                    f"timeout_s is {self.timeout_s}{hint}",
                    self.timeout_s,
                )
            )
        if self.backoff.max_s < self.poll_interval_s:
            problems.append(
                (
                    ("backoff", "max_s"),
                    f"must be at least poll_interval_s ({self.poll_interval_s})",
                    self.backoff.max_s,
                )
            )
        return problems


class SimulatedDevice(_DeviceBase):
    """A simulated machine (no hardware), for demos and soak tests."""

    protocol: Literal["simulated"]
    kind: MachineKind


class ModbusTcpDevice(_DeviceBase):
    """A meter reached over Modbus TCP, decoded with a register map."""

    protocol: Literal["modbus_tcp"]
    host: str = Field(min_length=1, max_length=253, pattern=_HOST_PATTERN)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=247)
    register_map: str | Path = Field(
        description="A built-in register map's name, or a path to a register map file"
    )

    @field_validator("register_map", mode="before")
    @classmethod
    def _name_or_path(cls, value: object, info: ValidationInfo) -> str | Path:
        if not isinstance(value, str):
            raise ValueError("must be a register map name or a file path (a string)")
        # Anything that looks like a file is one; everything else names a built-in map.
        is_path = "/" in value or "\\" in value or Path(value).suffix in _REGISTER_MAP_SUFFIXES
        if is_path:
            return _must_be_file(_resolve_path(Path(value), info))
        if re.fullmatch(IDENTIFIER_PATTERN, value) is None:
            raise ValueError(f"not a register map name or a file path: {value!r}")
        return value

    def _rule_problems(self) -> list[tuple[Loc, str, object]]:
        problems = super()._rule_problems()
        # Loaded here so a wrong map name, a broken map file or a metric the map lacks
        # stops the gateway at start-up instead of failing every poll.
        try:
            register_map = load_register_map(self.register_map)
        except RegisterMapError as exc:
            problems.append((("register_map",), exc.summary(), str(self.register_map)))
            return problems
        provided = ", ".join(register_map.metrics)
        for index, metric in enumerate(self.metrics):
            if metric not in register_map.metrics:
                problems.append(
                    (
                        ("metrics", index),
                        f"register map {str(self.register_map)!r} has no {metric!r}; "
                        f"it provides: {provided}",
                        metric,
                    )
                )
        return problems


class OpcUaDevice(_DeviceBase):
    """A meter or PLC read over OPC UA, one node per metric.

    A node's value is taken to be in the metric's canonical unit unless ``units`` names the
    unit it is in; the adapter converts it and checks it against the node's own
    EngineeringUnits property where the server publishes one.
    """

    protocol: Literal["opcua"]
    endpoint: str = Field(description="opc.tcp://host[:port][/path]")
    nodes: dict[str, Annotated[str, Field(pattern=_NODE_ID_PATTERN)]] = Field(
        description="Node id of each metric, e.g. active_power = 'ns=3;s=Meter1.P'"
    )
    units: dict[str, str] = Field(
        default_factory=dict,
        description="Unit of a node's value where it is not the canonical one, e.g. "
        "active_power = 'kW'",
    )

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            _ = parts.port  # raises ValueError if the port is not a number in range
        except ValueError as exc:
            raise ValueError(f"not a valid URL: {exc}") from exc
        if parts.scheme != "opc.tcp" or not parts.hostname:
            raise ValueError("must be an opc.tcp://host[:port][/path] URL")
        return value

    def _rule_problems(self) -> list[tuple[Loc, str, object]]:
        problems = super()._rule_problems()
        for metric in self.metrics:
            if metric not in self.nodes:
                problems.append((("nodes",), f"no node id for metric {metric!r}", None))
        for metric in self.nodes:
            if metric not in self.metrics:
                problems.append(
                    (("nodes", metric), f"{metric!r} is not in this device's metrics", metric)
                )
        for metric, unit in self.units.items():
            if metric not in self.metrics:
                problems.append(
                    (("units", metric), f"{metric!r} is not in this device's metrics", unit)
                )
                continue
            canonical = METRIC_UNITS[metric]
            if conversion(unit, canonical) is None:
                known = ", ".join(repr(name) for name in source_units(canonical))
                message = f"cannot convert {unit!r} to {canonical} ({metric}); use one of {known}"
                problems.append((("units", metric), message, unit))
        return problems

    def source_unit(self, metric: str) -> str:
        """The unit the node of ``metric`` delivers its value in."""
        return self.units.get(metric, METRIC_UNITS[metric])


DeviceConfig = Annotated[
    SimulatedDevice | ModbusTcpDevice | OpcUaDevice, Field(discriminator="protocol")
]


# --- the file ----------------------------------------------------------------------------


class GatewayConfig(StrictTable):
    """The whole gateway config file."""

    gateway_id: Identifier
    broker: BrokerSettings
    topic_root: str = Field(default="cf/v1", pattern=_TOPIC_ROOT_PATTERN)
    buffer: BufferSettings
    publish: PublishSettings = PublishSettings()
    devices: Annotated[tuple[DeviceConfig, ...], NonEmpty]

    @model_validator(mode="wrap")
    @classmethod
    def _unique_device_ids(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # Checked on the raw tables so duplicates are reported together with every other
        # problem in the file, not only once the rest is fixed.
        duplicates = [rule_error(loc, msg, value) for loc, msg, value in _duplicate_ids(data)]
        try:
            model = handler(data)
        except ValidationError as exc:
            if not duplicates:
                raise
            raise ValidationError.from_exception_data(
                cls.__name__, [*_reinit(exc.errors()), *duplicates]
            ) from None
        if duplicates:
            raise ValidationError.from_exception_data(cls.__name__, duplicates)
        return model

    def device(self, device_id: str) -> SimulatedDevice | ModbusTcpDevice | OpcUaDevice:
        """The device with this id; KeyError if there is none."""
        for device in self.devices:
            if device.device_id == device_id:
                return device
        raise KeyError(device_id)


def _duplicate_ids(data: Any) -> list[tuple[Loc, str, object]]:
    if not isinstance(data, Mapping):
        return []
    devices = data.get("devices")
    if not isinstance(devices, list | tuple):
        return []
    first_index: dict[str, int] = {}
    problems: list[tuple[Loc, str, object]] = []
    for index, device in enumerate(devices):
        device_id = device.get("device_id") if isinstance(device, Mapping) else None
        if not isinstance(device_id, str):
            continue
        if device_id in first_index:
            problems.append(
                (
                    ("devices", index, "device_id"),
                    f"duplicate device id {device_id!r}, "
                    f"already used by devices[{first_index[device_id]}]",
                    device_id,
                )
            )
        else:
            first_index[device_id] = index
    return problems


def _reinit(errors: list[ErrorDetails]) -> list[InitErrorDetails]:
    # Rebuild errors so they can be raised together with new ones; type, location, input
    # and message are kept.
    return [
        InitErrorDetails(
            type=PydanticCustomError(
                error["type"], "{message}", {**error.get("ctx", {}), "message": error["msg"]}
            ),
            loc=error["loc"],
            input=error["input"],
        )
        for error in errors
    ]


# --- turning validation errors into messages ---------------------------------------------


def _strip_union_tag(loc: Loc) -> Loc:
    # pydantic puts the discriminator's value into the location of a device's fields
    # (devices.2.modbus_tcp.port); the file has no such level.
    if len(loc) > 2 and loc[0] == "devices" and isinstance(loc[1], int) and loc[2] in PROTOCOLS:
        return (*loc[:2], *loc[3:])
    return loc


# What each pattern means, in words an operator can act on.
_PATTERN_MEANING: Final = {
    IDENTIFIER_PATTERN: (
        "must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"
    ),
    _HOST_PATTERN: "must be a host name or IP address, without scheme or port",
    _TOPIC_ROOT_PATTERN: "must be topic levels joined by '/', without wildcards or empty levels",
    _NODE_ID_PATTERN: "must be an OPC UA node id such as 'ns=3;s=Meter1.P' or 'i=2258'",
    _ENV_NAME_PATTERN: "must be an environment variable name (letters, digits, '_')",
}


def _describe(error: ErrorDetails) -> tuple[Loc, str]:
    loc: Loc = _strip_union_tag(tuple(error["loc"]))
    kind = error["type"]
    ctx = error.get("ctx") or {}
    protocols = ", ".join(repr(name) for name in PROTOCOLS)
    if kind == "union_tag_invalid":
        return (*loc, "protocol"), f"must be one of {protocols} (got {ctx.get('tag')!r})"
    if kind == "union_tag_not_found":
        return (*loc, "protocol"), f"required; one of {protocols}"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") in _PATTERN_MEANING:
        return loc, f"{_PATTERN_MEANING[ctx['pattern']]} (got {error['input']!r})"
    return loc, plain_message(error)


def format_validation_error(exc: ValidationError) -> list[str]:
    """One ``path.to.field: message`` line per problem, in file order, without duplicates."""
    return format_problems(exc, _describe)


_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)")


def load_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway config file; ConfigFileError lists every problem."""
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except FileNotFoundError as exc:
        raise ConfigFileError(path, ["file not found"]) from exc
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11 keeps line and column only in the message: "... (at line 3, column 7)".
        message = str(exc)
        position = _TOML_POSITION.search(message)
        if position is not None:
            reason = message[: position.start()].rstrip()
            where = f"line {position.group(1)}, column {position.group(2)}"
            message = f"{where}: TOML syntax error: {reason}"
        else:
            message = f"TOML syntax error: {message}"
        raise ConfigFileError(path, [message]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigFileError(path, [f"not UTF-8 text: {exc}"]) from exc
    except OSError as exc:
        raise ConfigFileError(path, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    try:
        return GatewayConfig.model_validate(raw, context={"base_dir": path.absolute().parent})
    except ValidationError as exc:
        raise ConfigFileError(path, format_validation_error(exc)) from exc
