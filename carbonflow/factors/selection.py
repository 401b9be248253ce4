"""Which factor version answers a lookup: pure policy, no database.

Effective periods are half-open ranges of calendar dates, ``[valid_from, valid_until)``
(either end open when unknown); the published ``valid_to`` is the last day, inclusive.
A moment is placed on a calendar date in the site's own time zone, so a Shanghai reading at
00:30 on 1 January belongs to the new year's factor.

Policy, in order:

1. For the site's grid region, then its country, then ``GLOBAL``: the factors whose period
   contains the day. Of each factor, the highest version whose period contains the day (a
   restatement replaces what it covers; outside its period earlier versions still answer).
   Found at a level: that is the answer. Two different factors at one level: ambiguous.
2. Nothing in force anywhere (a grid factor for year Y is published a year or two after Y):
   the same search for the factor whose period ended most recently before the day. The
   answer is flagged ``proxy`` and says which period it stands in for. A factor is never
   used for a day before its period begins.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict

from carbonflow.factors.codes import GLOBAL_REGION, STANDARD_VARIANT, Parameter
from carbonflow.factors.errors import AmbiguousFactorError, FactorNotFoundError


class Level(StrEnum):
    """Where in the site's region chain a factor was found."""

    GRID_REGION = "grid_region"
    COUNTRY = "country"
    GLOBAL = "global"


class FactorKey(BaseModel):
    """What is looked up, apart from place and time."""

    model_config = ConfigDict(frozen=True)

    carrier: str
    parameter: Parameter
    gas: str = "none"
    variant: str = STANDARD_VARIANT
    gwp_set: str = ""
    unit: str | None = None  # a canonical unit, when the carrier has factors per several units


class FactorVersion(BaseModel):
    """One version of one factor, as stored."""

    model_config = ConfigDict(frozen=True)

    factor_id: str
    version: int
    region_code: str
    carrier: str
    parameter: Parameter
    gas: str
    variant: str
    gwp_set: str
    unit: str  # canonical
    value: Decimal  # in ``unit``
    source_value: Decimal
    source_unit: str
    valid_from: date | None
    valid_until: date | None  # exclusive
    source: str
    source_detail: str
    reason: str
    recorded_at: datetime

    @property
    def valid_to(self) -> date | None:
        """The last day of the period, inclusive (as published)."""
        return None if self.valid_until is None else self.valid_until - timedelta(days=1)

    def in_force_on(self, day: date) -> bool:
        return (self.valid_from is None or self.valid_from <= day) and (
            self.valid_until is None or day < self.valid_until
        )

    def ended_before(self, day: date) -> bool:
        return self.valid_until is not None and self.valid_until <= day

    def period(self) -> str:
        return f"{self.valid_from or '...'} to {self.valid_to or '...'}"


class FactorMatch(BaseModel):
    """The answer to a lookup: the factor version to use, and how it was found."""

    model_config = ConfigDict(frozen=True)

    factor: FactorVersion
    day: date
    region: str  # the region code the factor was found for
    level: Level
    proxy: bool  # True: no factor is in force on ``day``; this one ended before it
    note: str

    @property
    def factor_id(self) -> str:
        return self.factor.factor_id

    @property
    def version(self) -> int:
        return self.factor.version


def region_chain(grid_region: str | None, country: str | None) -> list[tuple[str, Level]]:
    """The regions to search, most specific first, without repeats (case-insensitive)."""
    chain: list[tuple[str, Level]] = []
    for code, level in (
        (grid_region, Level.GRID_REGION),
        (country, Level.COUNTRY),
        (GLOBAL_REGION, Level.GLOBAL),
    ):
        if code and all(code.casefold() != seen.casefold() for seen, _ in chain):
            chain.append((code, level))
    return chain


def reference_day(at: datetime, timezone: str = "UTC") -> date:
    """The calendar date of ``at`` (timezone-aware) in the given IANA time zone."""
    if at.tzinfo is None:
        raise ValueError("a lookup moment must be timezone-aware")
    return at.astimezone(ZoneInfo(timezone)).date()


def select(
    candidates: Iterable[FactorVersion],
    chain: Sequence[tuple[str, Level]],
    day: date,
    *,
    allow_proxy: bool = True,
) -> FactorMatch:
    """Pick the version that answers a lookup (policy in the module docstring).

    ``candidates`` are the versions of every factor with the looked-up key, in any region.
    """
    by_region: dict[str, list[FactorVersion]] = {}
    for version in candidates:
        by_region.setdefault(version.region_code.casefold(), []).append(version)
    for code, level in chain:
        found = _latest_per_factor(
            v for v in by_region.get(code.casefold(), ()) if v.in_force_on(day)
        )
        if found:
            factor = _only(found, code, day)
            return FactorMatch(
                factor=factor,
                day=day,
                region=factor.region_code,
                level=level,
                proxy=False,
                note=f"{factor.factor_id} v{factor.version} in force on {day} ({level.value})",
            )
    if allow_proxy:
        for code, level in chain:
            ended = _latest_per_factor(
                v for v in by_region.get(code.casefold(), ()) if v.ended_before(day)
            )
            if ended:
                newest_end = max(v.valid_until or date.max for v in ended)
                factor = _only([v for v in ended if v.valid_until == newest_end], code, day)
                return FactorMatch(
                    factor=factor,
                    day=day,
                    region=factor.region_code,
                    level=level,
                    proxy=True,
                    note=(
                        f"PROXY: no factor is in force on {day}; {factor.factor_id} "
                        f"v{factor.version} for {factor.period()} is the latest published "
                        f"({level.value})"
                    ),
                )
    regions = ", ".join(code for code, _ in chain)
    raise FactorNotFoundError(
        f"no factor for {day} in {regions}" + ("" if allow_proxy else " (proxies not allowed)")
    )


def _latest_per_factor(versions: Iterable[FactorVersion]) -> list[FactorVersion]:
    latest: dict[str, FactorVersion] = {}
    for version in versions:
        current = latest.get(version.factor_id)
        if current is None or version.version > current.version:
            latest[version.factor_id] = version
    return list(latest.values())


def _only(found: list[FactorVersion], region: str, day: date) -> FactorVersion:
    if len(found) > 1:
        ids = ", ".join(sorted(f"{v.factor_id} v{v.version}" for v in found))
        raise AmbiguousFactorError(f"several factors answer for {region} on {day}: {ids}")
    return found[0]
