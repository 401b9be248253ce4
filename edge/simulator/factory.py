"""A simulated factory: its layout (sites, lines, machines) and a deterministic power model.

Pure domain code: no I/O, no wall clock, no environment. Every simulated value is a function
of (seed, device id, time) only, so any sample can be recomputed in any order, by any process,
and a replay of the same range publishes the same readings again.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo

from schemas.telemetry import METRIC_UNITS, Reading

ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_ID_LENGTH: Final = 64
MAX_BATCH_SIZE: Final = 10_000  # the telemetry contract's limit per batch

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US: Final = timedelta(microseconds=1)
_WEEKDAYS: Final = frozenset(range(5))


def _check_id(kind: str, value: str) -> None:
    if not (0 < len(value) <= MAX_ID_LENGTH and ID_PATTERN.match(value)):
        raise ValueError(f"invalid {kind} id {value!r}")


# --------------------------------------------------------------------------------------------
# Layout


@dataclass(frozen=True, slots=True)
class Organisation:
    org_id: str
    name: str

    def __post_init__(self) -> None:
        _check_id("organisation", self.org_id)


@dataclass(frozen=True, slots=True)
class Site:
    """A plant. Its working hours are in its own local time, so they follow DST."""

    site_id: str
    org_id: str
    name: str
    timezone: str
    country: str
    grid_region: str
    shift_start: time = time(6, 0)
    shift_end: time = time(22, 0)  # equal to shift_start: round the clock; earlier: overnight
    working_days: frozenset[int] = _WEEKDAYS  # date.weekday() of the day a shift starts

    def __post_init__(self) -> None:
        _check_id("site", self.site_id)
        if not re.fullmatch(r"[A-Z]{2}", self.country):
            raise ValueError(f"country must be an ISO 3166 alpha-2 code, got {self.country!r}")
        if not self.working_days <= frozenset(range(7)):
            raise ValueError(f"working days must be 0 (Monday) to 6, got {self.working_days}")
        _zone(self.timezone)  # unknown zones fail here, not on the first sample

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.timezone)


@dataclass(frozen=True, slots=True)
class Area:
    """A hall or building of a site; the parent of lines."""

    asset_id: str
    site_id: str
    name: str

    def __post_init__(self) -> None:
        _check_id("asset", self.asset_id)


@dataclass(frozen=True, slots=True)
class Line:
    asset_id: str
    site_id: str
    name: str
    area_id: str | None = None

    def __post_init__(self) -> None:
        _check_id("asset", self.asset_id)


class MachineKind(StrEnum):
    CNC_MILL = "cnc_mill"
    CNC_LATHE = "cnc_lathe"
    INJECTION_MOULDING = "injection_moulding"
    WELDING_ROBOT = "welding_robot"
    CONVEYOR = "conveyor"
    PAINT_BOOTH = "paint_booth"
    CURING_OVEN = "curing_oven"
    AIR_COMPRESSOR = "air_compressor"
    CHILLER = "chiller"


class Pattern(StrEnum):
    STEADY = "steady"  # a level that changes from job to job
    CYCLIC = "cyclic"  # a repeating machine cycle (moulding shots, weld seams)
    THERMAL = "thermal"  # thermostat switching heaters on and off


@dataclass(frozen=True, slots=True)
class PowerProfile:
    """How a machine draws power. Fractions are shares of the machine's rated power."""

    pattern: Pattern = Pattern.STEADY
    continuous: bool = False  # runs around the clock (utilities) instead of with the shifts
    duty_shift: float = 0.7  # chance that a state slot is 'running' while the site works
    duty_off: float = 0.0  # the same outside working hours (leaks keep compressors loading)
    slot_s: float = 300.0  # mean length of a running/idle state
    load_lo: float = 0.6  # running level drawn per state slot from [load_lo, load_hi]
    load_hi: float = 0.9
    inrush_factor: float = 1.0  # peak multiple of the running level right after a start
    inrush_s: float = 0.0  # how long the start-up peak takes to die away
    noise: float = 0.03  # relative standard deviation of sample noise
    cycle_s: float = 0.0  # CYCLIC: machine cycle; THERMAL: thermostat period
    cycle_on: float = 0.5  # share of the cycle at full level (THERMAL: mean heater duty)
    cycle_low: float = 0.3  # level in the rest of the cycle, as a share of the running level
    preheat_s: float = 0.0  # THERMAL: heat up this long before the shift starts

    def __post_init__(self) -> None:
        shares = (self.duty_shift, self.duty_off, self.load_lo, self.load_hi, self.cycle_on)
        if not all(0.0 <= v <= 1.0 for v in (*shares, self.cycle_low)):
            raise ValueError("duties, loads and cycle shares must be within [0, 1]")
        if self.load_lo > self.load_hi:
            raise ValueError("load_lo must not exceed load_hi")
        if self.slot_s <= 0 or self.inrush_s < 0 or self.preheat_s < 0 or self.noise < 0:
            raise ValueError("slot_s must be positive; inrush_s, preheat_s, noise non-negative")
        if self.inrush_factor < 1.0:
            raise ValueError("inrush_factor must be at least 1")
        if self.pattern is not Pattern.STEADY and self.cycle_s <= 0:
            raise ValueError(f"a {self.pattern} profile needs a positive cycle_s")


#: Typical behaviour per machine kind; a machine may carry its own profile instead.
PROFILES: Final[dict[MachineKind, PowerProfile]] = {
    # Spindle load varies by job; the spindle run-up draws a short peak.
    MachineKind.CNC_MILL: PowerProfile(
        duty_shift=0.7,
        slot_s=240,
        load_lo=0.35,
        load_hi=0.85,
        inrush_factor=1.8,
        inrush_s=8,
        noise=0.08,
    ),
    MachineKind.CNC_LATHE: PowerProfile(
        duty_shift=0.65,
        slot_s=180,
        load_lo=0.3,
        load_hi=0.8,
        inrush_factor=1.7,
        inrush_s=6,
        noise=0.07,
    ),
    # Long runs of shots; barrel heaters pull hard for a couple of minutes after a stop.
    MachineKind.INJECTION_MOULDING: PowerProfile(
        pattern=Pattern.CYCLIC,
        duty_shift=0.85,
        slot_s=900,
        load_lo=0.7,
        load_hi=0.9,
        inrush_factor=1.35,
        inrush_s=120,
        noise=0.04,
        cycle_s=35,
        cycle_on=0.35,
        cycle_low=0.5,
    ),
    MachineKind.WELDING_ROBOT: PowerProfile(
        pattern=Pattern.CYCLIC,
        duty_shift=0.75,
        slot_s=300,
        load_lo=0.7,
        load_hi=0.95,
        noise=0.1,
        cycle_s=24,
        cycle_on=0.55,
        cycle_low=0.1,
    ),
    # Direct-on-line motor: a sharp, short starting current.
    MachineKind.CONVEYOR: PowerProfile(
        duty_shift=0.9,
        slot_s=600,
        load_lo=0.55,
        load_hi=0.75,
        inrush_factor=2.5,
        inrush_s=3,
        noise=0.02,
    ),
    MachineKind.PAINT_BOOTH: PowerProfile(
        duty_shift=0.95,
        slot_s=1800,
        load_lo=0.8,
        load_hi=0.9,
        inrush_factor=2.0,
        inrush_s=10,
        noise=0.02,
    ),
    MachineKind.CURING_OVEN: PowerProfile(
        pattern=Pattern.THERMAL,
        slot_s=600,
        noise=0.02,
        cycle_s=420,
        cycle_on=0.45,
        preheat_s=2700,
    ),
    # Load/unload control; leaks keep loading it at night and at weekends.
    MachineKind.AIR_COMPRESSOR: PowerProfile(
        continuous=True,
        duty_shift=0.8,
        duty_off=0.25,
        slot_s=90,
        load_lo=0.92,
        load_hi=1.0,
        noise=0.015,
    ),
    MachineKind.CHILLER: PowerProfile(
        continuous=True,
        duty_shift=0.85,
        duty_off=0.45,
        slot_s=600,
        load_lo=0.55,
        load_hi=0.9,
        inrush_factor=1.5,
        inrush_s=30,
        noise=0.03,
    ),
}


@dataclass(frozen=True, slots=True)
class Machine:
    """A machine asset with the one power meter (device) that measures it."""

    asset_id: str
    line_id: str
    site_id: str
    device_id: str
    gateway_id: str
    kind: MachineKind
    name: str
    rated_w: float  # running at full load
    idle_w: float  # switched on, not producing (or unloaded, for utilities)
    standby_w: float  # switched off outside the shifts: controls, lighting of the cabinet
    profile: PowerProfile
    metric: str = "active_power"
    unit: str = "W"
    energy_carrier: str = "electricity"

    def __post_init__(self) -> None:
        for kind, value in (("asset", self.asset_id), ("device", self.device_id)):
            _check_id(kind, value)
        _check_id("gateway", self.gateway_id)
        if not 0.0 <= self.standby_w <= self.idle_w <= self.rated_w or self.rated_w <= 0:
            raise ValueError(f"{self.device_id}: need 0 <= standby_w <= idle_w <= rated_w > 0")
        if METRIC_UNITS.get(self.metric) != self.unit:
            raise ValueError(f"{self.device_id}: {self.metric!r} is not measured in {self.unit!r}")

    @property
    def is_production(self) -> bool:
        """Follows the shifts (utilities run around the clock)."""
        return not self.profile.continuous


@dataclass(frozen=True)
class FactoryLayout:
    """One organisation's sites, with their areas, lines and metered machines."""

    organisation: Organisation
    sites: tuple[Site, ...]
    lines: tuple[Line, ...]
    machines: tuple[Machine, ...]
    areas: tuple[Area, ...] = ()
    _by_device: dict[str, Machine] = field(init=False, repr=False, compare=False)
    _by_site: dict[str, Site] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sites = {s.site_id: s for s in self.sites}
        areas = {a.asset_id: a for a in self.areas}
        lines = {line.asset_id: line for line in self.lines}
        machines = {m.device_id: m for m in self.machines}
        if len(sites) != len(self.sites) or len(machines) != len(self.machines):
            raise ValueError("site ids and device ids must be unique")
        asset_ids = [
            *(a.asset_id for a in self.areas),
            *(line.asset_id for line in self.lines),
            *(m.asset_id for m in self.machines),
        ]
        if len(set(asset_ids)) != len(asset_ids):
            raise ValueError("asset ids must be unique across areas, lines and machines")
        for site in self.sites:
            if site.org_id != self.organisation.org_id:
                raise ValueError(f"site {site.site_id} belongs to another organisation")
        for area in self.areas:
            if area.site_id not in sites:
                raise ValueError(f"area {area.asset_id} is on unknown site {area.site_id}")
        for line in self.lines:
            if line.site_id not in sites:
                raise ValueError(f"line {line.asset_id} is on unknown site {line.site_id}")
            if line.area_id is not None and (
                line.area_id not in areas or areas[line.area_id].site_id != line.site_id
            ):
                raise ValueError(f"line {line.asset_id} is in unknown area {line.area_id}")
        for m in self.machines:
            parent = lines.get(m.line_id)
            if parent is None or parent.site_id != m.site_id:
                raise ValueError(f"machine {m.asset_id} is on no line {m.line_id} of {m.site_id}")
        object.__setattr__(self, "_by_device", machines)
        object.__setattr__(self, "_by_site", sites)

    def devices(self) -> tuple[str, ...]:
        return tuple(m.device_id for m in self.machines)

    def gateways(self) -> tuple[str, ...]:
        return tuple(sorted({m.gateway_id for m in self.machines}))

    def machine(self, device_id: str) -> Machine:
        try:
            return self._by_device[device_id]
        except KeyError:
            raise KeyError(f"no machine with device id {device_id!r}") from None

    def site(self, site_id: str) -> Site:
        try:
            return self._by_site[site_id]
        except KeyError:
            raise KeyError(f"no site {site_id!r}") from None

    def machines_at(self, site_id: str) -> tuple[Machine, ...]:
        return tuple(m for m in self.machines if m.site_id == site_id)

    def lines_at(self, site_id: str) -> tuple[Line, ...]:
        return tuple(line for line in self.lines if line.site_id == site_id)


# --------------------------------------------------------------------------------------------
# The demo factory

# One machine: (kind, name, rated kW, idle kW, standby kW); a site is (line key, name, machines).
_Spec = tuple[MachineKind, str, float, float, float]

_SUZHOU_LINES: Final[tuple[tuple[str, str, tuple[_Spec, ...]], ...]] = (
    (
        "machining",
        "Machining",
        (
            (MachineKind.CNC_MILL, "5-axis machining centre 1", 22.0, 2.5, 0.4),
            (MachineKind.CNC_MILL, "5-axis machining centre 2", 22.0, 2.5, 0.4),
            (MachineKind.CNC_MILL, "Vertical machining centre 3", 15.0, 1.8, 0.3),
            (MachineKind.CNC_MILL, "Vertical machining centre 4", 15.0, 1.8, 0.3),
            (MachineKind.CNC_LATHE, "CNC turning centre 1", 18.0, 1.5, 0.3),
            (MachineKind.CNC_LATHE, "CNC turning centre 2", 18.0, 1.5, 0.3),
        ),
    ),
    (
        "moulding",
        "Injection moulding",
        (
            (MachineKind.INJECTION_MOULDING, "Injection moulding machine 250 t", 45.0, 9.0, 0.6),
            (MachineKind.INJECTION_MOULDING, "Injection moulding machine 250 t", 45.0, 9.0, 0.6),
            (MachineKind.INJECTION_MOULDING, "Injection moulding machine 450 t", 90.0, 16.0, 0.8),
        ),
    ),
    (
        "assembly",
        "Motor assembly",
        (
            (MachineKind.WELDING_ROBOT, "Welding robot cell 1", 18.0, 1.2, 0.2),
            (MachineKind.WELDING_ROBOT, "Welding robot cell 2", 18.0, 1.2, 0.2),
            (MachineKind.CONVEYOR, "Assembly conveyor", 7.5, 0.6, 0.05),
        ),
    ),
    (
        "utilities",
        "Compressed air and cooling",
        (
            (MachineKind.AIR_COMPRESSOR, "Screw compressor 75 kW", 75.0, 21.0, 0.0),
            (MachineKind.AIR_COMPRESSOR, "Screw compressor 37 kW", 37.0, 10.0, 0.0),
            (MachineKind.CHILLER, "Process chiller (moulds)", 60.0, 8.0, 0.0),
        ),
    ),
)

_WROCLAW_LINES: Final[tuple[tuple[str, str, tuple[_Spec, ...]], ...]] = (
    (
        "machining",
        "Machining",
        (
            (MachineKind.CNC_MILL, "Horizontal machining centre 1", 30.0, 3.0, 0.5),
            (MachineKind.CNC_MILL, "Horizontal machining centre 2", 30.0, 3.0, 0.5),
            (MachineKind.CNC_LATHE, "CNC turning centre 1", 18.0, 1.5, 0.3),
        ),
    ),
    (
        "painting",
        "Paint shop",
        (
            (MachineKind.PAINT_BOOTH, "Spray booth fans", 30.0, 3.0, 0.2),
            (MachineKind.CURING_OVEN, "Curing oven", 120.0, 9.0, 0.5),
            (MachineKind.CONVEYOR, "Paint line overhead conveyor", 5.5, 0.5, 0.05),
        ),
    ),
    (
        "assembly",
        "Housing assembly",
        (
            (MachineKind.WELDING_ROBOT, "Welding robot cell 1", 20.0, 1.2, 0.2),
            (MachineKind.WELDING_ROBOT, "Welding robot cell 2", 20.0, 1.2, 0.2),
            (MachineKind.CONVEYOR, "Assembly conveyor", 7.5, 0.6, 0.05),
        ),
    ),
    (
        "utilities",
        "Compressed air and cooling",
        (
            (MachineKind.AIR_COMPRESSOR, "Screw compressor 55 kW", 55.0, 15.0, 0.0),
            (MachineKind.CHILLER, "Chiller (paint shop and hydraulics)", 45.0, 6.0, 0.0),
        ),
    ),
)

_SHORT: Final[dict[MachineKind, str]] = {
    MachineKind.CNC_MILL: "cnc",
    MachineKind.CNC_LATHE: "lathe",
    MachineKind.INJECTION_MOULDING: "imm",
    MachineKind.WELDING_ROBOT: "weld",
    MachineKind.CONVEYOR: "conv",
    MachineKind.PAINT_BOOTH: "booth",
    MachineKind.CURING_OVEN: "oven",
    MachineKind.AIR_COMPRESSOR: "comp",
    MachineKind.CHILLER: "chiller",
}


def _build_site(
    site: Site,
    short: str,
    gateway_id: str,
    spec: tuple[tuple[str, str, tuple[_Spec, ...]], ...],
) -> tuple[Area, list[Line], list[Machine]]:
    area = Area(f"{site.site_id}.hall-a", site.site_id, f"{site.name}, hall A")
    lines: list[Line] = []
    machines: list[Machine] = []
    counters: dict[MachineKind, int] = {}
    for line_key, line_name, machine_specs in spec:
        line = Line(f"{site.site_id}.{line_key}", site.site_id, line_name, area.asset_id)
        lines.append(line)
        for kind, name, rated_kw, idle_kw, standby_kw in machine_specs:
            counters[kind] = counters.get(kind, 0) + 1
            tag = f"{_SHORT[kind]}-{counters[kind]:02d}"
            machines.append(
                Machine(
                    asset_id=f"{line.asset_id}.{tag}",
                    line_id=line.asset_id,
                    site_id=site.site_id,
                    device_id=f"{short}-{tag}",
                    gateway_id=gateway_id,
                    kind=kind,
                    name=name,
                    rated_w=rated_kw * 1000.0,
                    idle_w=idle_kw * 1000.0,
                    standby_w=standby_kw * 1000.0,
                    profile=PROFILES[kind],
                )
            )
    return area, lines, machines


def demo_factory() -> FactoryLayout:
    """An electric-drive supplier with a plant in Suzhou (6-day week) and one in Wroclaw.

    The two sites sit in different time zones, and Wroclaw observes DST, so daily figures
    and shift patterns exercise local-time handling.
    """
    org = Organisation("meridian-drives", "Meridian Drive Systems")
    suzhou = Site(
        "cn-suzhou",
        org.org_id,
        "Suzhou plant",
        "Asia/Shanghai",
        "CN",
        "CN-East",
        working_days=frozenset(range(6)),
    )
    wroclaw = Site("pl-wroclaw", org.org_id, "Wroclaw plant", "Europe/Warsaw", "PL", "PL")
    sz_area, sz_lines, sz_machines = _build_site(suzhou, "sz", "gw-sz-01", _SUZHOU_LINES)
    wro_area, wro_lines, wro_machines = _build_site(wroclaw, "wro", "gw-wro-01", _WROCLAW_LINES)
    return FactoryLayout(
        organisation=org,
        sites=(suzhou, wroclaw),
        lines=(*sz_lines, *wro_lines),
        machines=(*sz_machines, *wro_machines),
        areas=(sz_area, wro_area),
    )


_SMALL_KINDS: Final[tuple[_Spec, ...]] = (
    (MachineKind.CNC_MILL, "Machining centre", 22.0, 2.5, 0.4),
    (MachineKind.INJECTION_MOULDING, "Injection moulding machine", 45.0, 9.0, 0.6),
    (MachineKind.WELDING_ROBOT, "Welding robot cell", 18.0, 1.2, 0.2),
    (MachineKind.CONVEYOR, "Conveyor", 7.5, 0.6, 0.05),
    (MachineKind.CNC_LATHE, "Turning centre", 18.0, 1.5, 0.3),
    (MachineKind.AIR_COMPRESSOR, "Screw compressor", 55.0, 15.0, 0.0),
    (MachineKind.CURING_OVEN, "Curing oven", 120.0, 9.0, 0.5),
    (MachineKind.CHILLER, "Chiller", 45.0, 6.0, 0.0),
)


def small_factory(
    n_devices: int, *, prefix: str = "sim", machines_per_line: int = 10
) -> FactoryLayout:
    """A layout of exactly ``n_devices`` machines over two sites (Shanghai and Warsaw time).

    Ids all start with ``prefix``, so a benchmark layout can be registered next to the demo.
    """
    if n_devices < 1 or machines_per_line < 1:
        raise ValueError("n_devices and machines_per_line must be positive")
    org = Organisation(f"{prefix}-org", f"Simulated factory ({prefix})")
    sites = (
        Site(
            f"{prefix}-s1",
            org.org_id,
            "Simulated plant 1",
            "Asia/Shanghai",
            "CN",
            "CN-East",
            working_days=frozenset(range(6)),
        ),
        Site(f"{prefix}-s2", org.org_id, "Simulated plant 2", "Europe/Warsaw", "PL", "PL"),
    )
    areas = tuple(Area(f"{s.site_id}.hall", s.site_id, f"{s.name}, hall") for s in sites)
    lines: dict[str, Line] = {}
    machines: list[Machine] = []
    for i in range(n_devices):
        site_no = i % len(sites)
        site, area = sites[site_no], areas[site_no]
        line_no = (i // len(sites)) // machines_per_line + 1
        line_id = f"{site.site_id}.line-{line_no:03d}"
        if line_id not in lines:
            lines[line_id] = Line(line_id, site.site_id, f"Line {line_no}", area.asset_id)
        kind, name, rated_kw, idle_kw, standby_kw = _SMALL_KINDS[i % len(_SMALL_KINDS)]
        machines.append(
            Machine(
                asset_id=f"{line_id}.m{i + 1:05d}",
                line_id=line_id,
                site_id=site.site_id,
                device_id=f"{prefix}-d{i + 1:05d}",
                gateway_id=f"{prefix}-gw{site_no + 1}",
                kind=kind,
                name=f"{name} {i + 1}",
                rated_w=rated_kw * 1000.0,
                idle_w=idle_kw * 1000.0,
                standby_w=standby_kw * 1000.0,
                profile=PROFILES[kind],
            )
        )
    return FactoryLayout(org, sites, tuple(lines.values()), tuple(machines), areas)


# --------------------------------------------------------------------------------------------
# Working hours


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def is_working(site: Site, t: datetime) -> bool:
    """Whether a shift is on at ``t`` (timezone-aware), judged by the site's local clock."""
    if t.utcoffset() is None:
        raise ValueError("t must be timezone-aware")
    local = t.astimezone(site.zone)
    tod, day = local.time(), local.weekday()
    start, end = site.shift_start, site.shift_end
    if start < end:
        return day in site.working_days and start <= tod < end
    if start == end:
        return day in site.working_days
    # An overnight shift: the early-morning part belongs to the previous day's shift.
    if tod >= start:
        return day in site.working_days
    return tod < end and (day - 1) % 7 in site.working_days


@lru_cache(maxsize=1 << 14)
def _working_minute(site: Site, minute: int) -> bool:
    # Shift edges and UTC offsets fall on whole minutes, so one answer per minute is exact.
    return is_working(site, _EPOCH + timedelta(minutes=minute))


def _working_at(site: Site, ts: float) -> bool:
    return _working_minute(site, math.floor(ts / 60.0))


# --------------------------------------------------------------------------------------------
# Stable pseudo-random numbers: a pure function of (seed, device, purpose, index)


def _device_key(seed: int, device_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}\x00{device_id}".encode(), digest_size=32).digest()


def _unit(key: bytes, tag: bytes, n: int) -> float:
    """A uniform number in [0, 1); ``hash()`` is salted per process, blake2b is not."""
    digest = hashlib.blake2b(
        n.to_bytes(8, "big", signed=True), digest_size=8, key=key, person=tag
    ).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _gauss(key: bytes, tag: bytes, n: int) -> float:
    """A standard normal number (Box-Muller), clipped to +-3 so noise never runs away."""
    digest = hashlib.blake2b(
        n.to_bytes(8, "big", signed=True), digest_size=16, key=key, person=tag
    ).digest()
    u1 = (int.from_bytes(digest[:8], "big") + 1) / 2.0**64  # (0, 1]: log stays finite
    u2 = int.from_bytes(digest[8:], "big") / 2.0**64
    z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)
    return max(-3.0, min(3.0, z))


_JITTER: Final = 0.8  # slot boundaries move by up to this share of a slot


@lru_cache(maxsize=1 << 16)
def _slot_start(key: bytes, k: int, slot_s: float) -> float:
    # Jittered boundaries: state lengths vary between 0.2 and 1.8 slots instead of a grid.
    return (k + _JITTER * _unit(key, b"slot", k)) * slot_s


def _slot(key: bytes, ts: float, slot_s: float) -> tuple[int, float]:
    """Index and start time of the state slot that holds ``ts``."""
    k = math.floor(ts / slot_s)
    start = _slot_start(key, k, slot_s)
    if ts < start:
        k -= 1
        start = _slot_start(key, k, slot_s)
    return k, start


@lru_cache(maxsize=1 << 16)
def _running(key: bytes, site: Site, profile: PowerProfile, k: int) -> bool:
    start = _slot_start(key, k, profile.slot_s)
    duty = profile.duty_shift if _working_at(site, start) else profile.duty_off
    return _unit(key, b"run", k) < duty


# --------------------------------------------------------------------------------------------
# The power model


class PowerModel:
    """Active power of every machine of a layout, deterministic in (seed, device, time)."""

    def __init__(self, layout: FactoryLayout, seed: int) -> None:
        self._layout = layout
        self._seed = seed
        self._keys = {m.device_id: _device_key(seed, m.device_id) for m in layout.machines}

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def layout(self) -> FactoryLayout:
        return self._layout

    def power_w(self, machine: Machine, t: datetime) -> float:
        """Active power in W at ``t`` (timezone-aware): finite and never negative."""
        if t.utcoffset() is None:
            raise ValueError("t must be timezone-aware")
        us = (t - _EPOCH) // _ONE_US
        key = self._keys.get(machine.device_id) or _device_key(self._seed, machine.device_id)
        site = self._layout.site(machine.site_id)
        ts = us / 1e6
        if machine.profile.pattern is Pattern.THERMAL:
            base = _thermal_w(machine, site, key, ts)
        else:
            base = _motor_w(machine, site, key, ts)
        noisy = base * (1.0 + machine.profile.noise * _gauss(key, b"noise", us))
        return max(0.0, noisy)

    def reading(self, machine: Machine, t: datetime) -> Reading:
        """One sample as the telemetry contract carries it (UTC timestamp)."""
        return Reading(
            ts=t.astimezone(UTC),
            metric=machine.metric,
            value=self.power_w(machine, t),
            unit=machine.unit,
        )


def _motor_w(m: Machine, site: Site, key: bytes, ts: float) -> float:
    """Machines that switch between running and idle states a few minutes long."""
    p = m.profile
    k, start = _slot(key, ts, p.slot_s)
    if not _running(key, site, p, k):
        return m.idle_w if p.continuous or _working_at(site, ts) else m.standby_w
    level = m.rated_w * (p.load_lo + (p.load_hi - p.load_lo) * _unit(key, b"level", k))
    if p.pattern is Pattern.CYCLIC:
        phase = ((ts - start) % p.cycle_s) / p.cycle_s
        if phase >= p.cycle_on:
            level = max(m.idle_w, level * p.cycle_low)
    since_start = ts - start
    if since_start < p.inrush_s and not _running(key, site, p, k - 1):
        level *= 1.0 + (p.inrush_factor - 1.0) * math.exp(-4.0 * since_start / p.inrush_s)
    return level


def _thermal_w(m: Machine, site: Site, key: bytes, ts: float) -> float:
    """Ovens: circulation fans plus heaters under a thermostat, preheated before the shift."""
    p = m.profile
    if not _working_at(site, ts):
        if p.preheat_s > 0 and _working_at(site, ts + p.preheat_s):
            return m.rated_w  # heating up from cold: every heater on
        return m.standby_w
    # A per-device phase offset keeps several ovens from switching in step.
    position = ts / p.cycle_s + _unit(key, b"phase", 0)
    k = math.floor(position)
    duty = min(1.0, max(0.0, p.cycle_on + 0.2 * (_unit(key, b"duty", k) - 0.5)))
    heaters_on = position - k < duty
    return m.idle_w + (m.rated_w - m.idle_w if heaters_on else 0.0)


# --------------------------------------------------------------------------------------------
# Sampling


def sample_times(start: datetime, end: datetime, interval_s: float) -> Iterator[datetime]:
    """The regular grid ``start, start + interval, ...`` before ``end``, in UTC."""
    if start.utcoffset() is None or end.utcoffset() is None:
        raise ValueError("start and end must be timezone-aware")
    step_us = round(interval_s * 1e6)
    if step_us <= 0:
        raise ValueError("interval_s must be at least one microsecond")
    start_utc = start.astimezone(UTC)
    span_us = (end - start) // _ONE_US
    for i in range(max(0, -(-span_us // step_us))):
        yield start_utc + timedelta(microseconds=i * step_us)


def simulate(
    layout: FactoryLayout,
    model: PowerModel,
    start: datetime,
    end: datetime,
    interval_s: float,
    batch_size: int = 300,
) -> Iterator[tuple[Machine, list[Reading]]]:
    """Readings of every machine on the grid over [start, end), ``batch_size`` per chunk.

    Chunks go round the machines for each stretch of time, so a replay interleaves devices
    the way live gateways would and memory stays at one stretch of ``batch_size`` samples.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be within 1..{MAX_BATCH_SIZE}")
    times = sample_times(start, end, interval_s)
    while True:
        stretch = list(itertools.islice(times, batch_size))
        if not stretch:
            return
        for machine in layout.machines:
            yield machine, [model.reading(machine, t) for t in stretch]
