"""Market-based Scope 2 in TimescaleDB: compute an organisation's sites for a local month from
energy_1m and the instrument registry, and store each site's figure as a version.

A site is always computed with the other sites of its organisation (in site-id order), since
they share the organisation's instruments. A figure that differs from the site's current one
for the month (other kWh, kgCO2e, instruments or residual factor version) is stored as the
next version and the current one is marked superseded; an unchanged figure writes nothing.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import psycopg

from carbonflow.emissions import ConsumptionInterval
from carbonflow.factors.selection import FactorVersion
from carbonflow.factors.store import SELECT_VERSIONS
from carbonflow.instruments import InstrumentError, for_organisation
from services.stream.market import (
    RESIDUAL_BASES,
    MarketMonth,
    MarketSite,
    applies,
    contractual,
    market_month,
    month_bounds,
    residual_factor,
)

logger = logging.getLogger(__name__)

_SITES = """
SELECT site_id, org_id, timezone, grid_region, country FROM sites
WHERE org_id = (SELECT org_id FROM sites WHERE site_id = %(site)s) OR org_id = %(org)s
ORDER BY site_id
"""

_CONSUMPTION = """
SELECT local_hour(e.ts, s.timezone) AS hour, sum(e.kwh), sum(e.coverage)
FROM energy_1m e
JOIN devices d USING (device_id) JOIN assets a USING (asset_id) JOIN sites s USING (site_id)
WHERE s.site_id = %(site)s AND d.energy_carrier = 'electricity'
  AND e.ts >= %(start)s AND e.ts < %(end)s
GROUP BY 1 ORDER BY 1
"""

_DEVICES = """
SELECT count(*) FROM devices d JOIN assets a USING (asset_id)
WHERE a.site_id = %(site)s AND d.energy_carrier = 'electricity'
"""

# kWh each instrument covered in the current figures of the organisation's earlier months.
_USED_BEFORE = """
SELECT x.instrument_id, sum(x.kwh)
FROM emissions_market_allocations x
JOIN emissions_market_monthly m USING (site_id, month, version)
WHERE m.superseded_at IS NULL AND m.month < %(month)s AND m.site_id = ANY(%(sites)s)
GROUP BY x.instrument_id
"""

_CURRENT = """
SELECT version, kwh, kg_co2e, residual_factor_id, residual_factor_version, residual_basis
FROM emissions_market_monthly
WHERE site_id = %(site)s AND month = %(month)s AND superseded_at IS NULL
"""
_CURRENT_SHARES = """
SELECT instrument_id, instrument_version, kwh FROM emissions_market_allocations
WHERE site_id = %(site)s AND month = %(month)s AND version = %(version)s
"""
_LAST_VERSION = """
SELECT coalesce(max(version), 0) FROM emissions_market_monthly
WHERE site_id = %(site)s AND month = %(month)s
"""
_SUPERSEDE = """
UPDATE emissions_market_monthly SET superseded_at = now()
WHERE site_id = %(site)s AND month = %(month)s AND superseded_at IS NULL
"""
_INSERT_MONTH = """
INSERT INTO emissions_market_monthly (site_id, month, version, kwh, kg_co2e, instrument_kwh,
    residual_kwh, residual_kg_co2e, residual_factor_id, residual_factor_version,
    residual_basis, residual_proxy, residual_note, coverage)
VALUES (%(site)s, %(month)s, %(version)s, %(kwh)s, %(kg)s, %(instrument_kwh)s,
    %(residual_kwh)s, %(residual_kg)s, %(factor_id)s, %(factor_version)s, %(basis)s,
    %(proxy)s, %(note)s, %(coverage)s)
"""
_INSERT_SHARE = """
INSERT INTO emissions_market_allocations (site_id, month, version, instrument_id,
    instrument_version, kind, kwh, kg_co2e)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
"""

#: Figures closer than this (kWh, kg) are the same figure: float sums in another order.
_SAME = 1e-9


@dataclass(frozen=True, slots=True)
class StoredMonth:
    figure: MarketMonth
    version: int
    new: bool  # False: the figure was already current, nothing written


def compute_month(
    conn: psycopg.Connection[Any],
    month: date,
    *,
    site_id: str | None = None,
    org_id: str | None = None,
) -> list[StoredMonth]:
    """Compute and store the month of every site of the organisation of ``site_id`` (or of
    ``org_id``); returns every site's figure, in site-id order."""
    if (site_id is None) == (org_id is None):
        raise InstrumentError("name a site or an organisation")
    try:
        with conn.transaction():
            sites = [
                MarketSite(*row)
                for row in conn.execute(_SITES, {"site": site_id, "org": org_id}).fetchall()
            ]
            if not sites:
                raise InstrumentError(f"unknown site {site_id} or organisation {org_id}")
            org = sites[0].org_id
            # One computation of an organisation's month at a time.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 11))", (f"{org}/{month}",)
            )
            used: dict[str, float] = defaultdict(float)
            for instrument_id, kwh in conn.execute(
                _USED_BEFORE, {"month": month, "sites": [s.site_id for s in sites]}
            ).fetchall():
                used[instrument_id] += float(kwh)
            held = for_organisation(conn, org)
            candidates = _grid_candidates(conn)
            stored = []
            for site in sites:
                figure = _site_month(conn, site, month, held, used, candidates)
                for share in figure.instruments:
                    used[share.ref.factor_id] += share.kwh
                stored.append(_store(conn, figure))
    except psycopg.Error as exc:
        raise InstrumentError(f"computing market-based Scope 2 failed: {exc}") from exc
    return stored


def _site_month(
    conn: psycopg.Connection[Any],
    site: MarketSite,
    month: date,
    held: list[Any],
    used: dict[str, float],
    candidates: dict[str, list[FactorVersion]],
) -> MarketMonth:
    start, end = month_bounds(month, site.timezone)
    row = conn.execute(_DEVICES, {"site": site.site_id}).fetchone()
    devices = int(row[0]) if row else 0
    consumption: list[ConsumptionInterval] = []
    covered = 0.0
    for hour, kwh, minutes in conn.execute(
        _CONSUMPTION, {"site": site.site_id, "start": start, "end": end}
    ).fetchall():
        covered += float(minutes)
        # Hour coverage: measured minutes over the devices' minutes of the hour.
        coverage = min(float(minutes) / (60.0 * devices), 1.0) if devices else 0.0
        consumption.append(
            ConsumptionInterval(hour, hour + timedelta(hours=1), float(kwh), coverage)
        )
    instruments = [
        contractual(i, site.timezone, used[i.instrument_id])
        for i in held
        if applies(i, site, month)
    ]
    residual = residual_factor(candidates, site, month)
    figure, _ = market_month(site, month, consumption, instruments, residual, covered, devices)
    return figure


def _grid_candidates(conn: psycopg.Connection[Any]) -> dict[str, list[FactorVersion]]:
    rows = conn.execute(
        SELECT_VERSIONS + " WHERE f.carrier = 'electricity' AND f.parameter = 'emission_factor'"
        " AND f.variant = ANY(%(variants)s)",
        {"variants": list(RESIDUAL_BASES)},
    )
    names = [c.name for c in rows.description or ()]
    by_variant: dict[str, list[FactorVersion]] = defaultdict(list)
    for values in rows.fetchall():
        version = FactorVersion.model_validate(dict(zip(names, values, strict=True)))
        by_variant[version.variant].append(version)
    return dict(by_variant)


def _store(conn: psycopg.Connection[Any], figure: MarketMonth) -> StoredMonth:
    key = {"site": figure.site_id, "month": figure.month}
    current = conn.execute(_CURRENT, key).fetchone()
    if current is not None and _same(conn, figure, current):
        return StoredMonth(figure, int(current[0]), new=False)
    last = conn.execute(_LAST_VERSION, key).fetchone()
    version = (int(last[0]) if last else 0) + 1
    conn.execute(_SUPERSEDE, key)
    residual = figure.residual
    conn.execute(
        _INSERT_MONTH,
        {
            **key,
            "version": version,
            "kwh": figure.kwh,
            "kg": figure.kg_co2e,
            "instrument_kwh": figure.instrument_kwh,
            "residual_kwh": figure.residual_kwh,
            "residual_kg": figure.residual_kg_co2e,
            "factor_id": residual.factor.ref.factor_id,
            "factor_version": residual.factor.ref.version,
            "basis": residual.basis,
            "proxy": residual.proxy,
            "note": residual.note,
            "coverage": figure.coverage,
        },
    )
    with conn.cursor() as cur:
        cur.executemany(
            _INSERT_SHARE,
            [
                (
                    figure.site_id,
                    figure.month,
                    version,
                    s.ref.factor_id,
                    s.ref.version,
                    s.kind,
                    s.kwh,
                    s.kg_co2e,
                )
                for s in figure.instruments
            ],
        )
    logger.info(
        "market-based Scope 2 of %s for %s: version %d", figure.site_id, figure.month, version
    )
    return StoredMonth(figure, version, new=True)


def _same(conn: psycopg.Connection[Any], figure: MarketMonth, current: tuple[Any, ...]) -> bool:
    version, kwh, kg, factor_id, factor_version, basis = current
    if (factor_id, factor_version, basis) != (
        figure.residual.factor.ref.factor_id,
        figure.residual.factor.ref.version,
        figure.residual.basis,
    ):
        return False
    if abs(kwh - figure.kwh) > _SAME or abs(kg - figure.kg_co2e) > _SAME:
        return False
    shares = {
        (i, v): k
        for i, v, k in conn.execute(
            _CURRENT_SHARES, {"site": figure.site_id, "month": figure.month, "version": version}
        ).fetchall()
    }
    mine = {(s.ref.factor_id, s.ref.version): s.kwh for s in figure.instruments}
    return shares.keys() == mine.keys() and all(abs(shares[k] - mine[k]) <= _SAME for k in mine)
