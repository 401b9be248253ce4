"""Hourly grid-intensity series on the real database: loads are versions, never overwrites;
minutes inside a series are priced with their hour's value and name the series version;
gaps stay unpriced and reported; minutes outside every series go to the annual factors."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import MappingProxyType

import psycopg
import pytest

from carbonflow.config import DatabaseSettings
from carbonflow.emissions import FactorRef, GridSeriesFormatError, HourlyGridSeries
from carbonflow.factors import store as factors
from carbonflow.factors.errors import FactorError
from carbonflow.factors.hourly import load_hourly_series
from services.stream import emission_store
from services.stream.emissions import DeviceSite
from services.stream.energy import EnergyIntervals
from services.stream.hourly_emissions import (
    HOURLY_METHOD,
    HourlyPricing,
    LoadedSeries,
    scope2_location_hourly,
)
from services.stream.hourly_store import (
    minute_range,
    regions_of,
    series_covering,
)

pytestmark = pytest.mark.integration

START = datetime(2024, 7, 1, 4, 0, tzinfo=UTC)
VALUES = (0.58, 0.61, 0.47, 0.52)  # kgCO2e/kWh of the hours from START on


@dataclass(frozen=True)
class Grid:
    """A site in a grid region of its own, with one electricity meter."""

    tag: str

    @property
    def region(self) -> str:
        return f"CN-H{self.tag}"

    @property
    def series_id(self) -> str:
        return f"TEST_HOURLY_{self.tag.upper()}"

    @property
    def device(self) -> str:
        return f"hs-{self.tag}"

    def create(self, conn: psycopg.Connection) -> None:
        org, site = f"hs-{self.tag}", f"hs-{self.tag}-site"
        conn.execute("INSERT INTO organisations (org_id, name) VALUES (%s, 'x')", (org,))
        conn.execute(
            "INSERT INTO sites (site_id, org_id, name, timezone, country, grid_region)"
            " VALUES (%s, %s, 'x', 'Asia/Shanghai', 'AQ', %s)",
            (site, org, self.region),
        )
        conn.execute(
            "INSERT INTO assets (asset_id, site_id, kind, name) VALUES (%s, %s, 'machine', 'x')",
            (f"{site}-m", site),
        )
        conn.execute(
            "INSERT INTO devices (device_id, asset_id, gateway_id, metric, unit, energy_carrier)"
            " VALUES (%s, %s, 'gw', 'active_power', 'W', 'electricity')",
            (self.device, f"{site}-m"),
        )

    def csv(self, values: dict[int, float], *, other_region: bool = False) -> str:
        lines = ["region_code,hour_start,kgco2e_per_kwh,source"]
        for hour, value in sorted(values.items()):
            at = (START + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")
            lines.append(f'{self.region},{at},{value},"test dispatch data, release 1"')
            if other_region:
                lines.append(f"CN-Other,{at},0.9,other")
        return "\n".join(lines) + "\n"


@pytest.fixture
def grid(db_settings: DatabaseSettings) -> Grid:
    grid = Grid(uuid.uuid4().hex[:8])
    with psycopg.connect(db_settings.conninfo(), autocommit=True) as conn:
        grid.create(conn)
    return grid


def minutes_of(grid: Grid, first: datetime, count: int, kwh: float = 0.1) -> EnergyIntervals:
    first_minute = int(first.timestamp()) // 60
    return EnergyIntervals(
        device_id=[grid.device] * count,
        minute=list(range(first_minute, first_minute + count)),
        kwh=[kwh + 0.001 * k for k in range(count)],  # every minute its own figure
        sample_count=[7] * count,
        coverage=[1.0] * count,
    )


def price(db: DatabaseSettings, intervals: EnergyIntervals, *, write: bool) -> HourlyPricing:
    """Fetch what the minutes need, price them and (optionally) write the rows."""

    async def go() -> HourlyPricing:
        async with await psycopg.AsyncConnection.connect(db.conninfo()) as conn:
            sites = await emission_store.device_sites(conn, intervals.device_id)
            start, end = minute_range(intervals.minute)
            loaded = await series_covering(conn, regions_of(sites), start, end)
            pricing = scope2_location_hourly(intervals, sites, loaded)
            if write:
                await emission_store.upsert_emissions(conn, pricing.rows)
                await conn.commit()
            return pricing

    return asyncio.run(go())


def test_loading_again_makes_a_new_version_and_keeps_the_first(
    db_conn: psycopg.Connection, grid: Grid
) -> None:
    first = load_hourly_series(
        db_conn, grid.csv(dict(enumerate(VALUES))), series_id=grid.series_id, source="test v1"
    )
    restated = {**dict(enumerate(VALUES)), 1: 0.66}
    second = load_hourly_series(
        db_conn,
        grid.csv(restated),
        series_id=grid.series_id,
        source="test v2",
        reason="publisher corrected hour 1",
    )
    assert (first.version, second.version) == (1, 2)
    assert (first.hours, second.hours) == (4, 4)
    assert first.first_hour == START
    assert first.end_hour == START + timedelta(hours=4)

    stored = db_conn.execute(
        "SELECT version, hour_start, kg_co2e_per_kwh FROM grid_intensity_hours"
        " WHERE series_id = %s ORDER BY version, hour_start",
        (grid.series_id,),
    ).fetchall()
    assert [(v, value) for v, _, value in stored] == [(1, v) for v in VALUES] + [
        (2, restated[h]) for h in range(4)
    ]
    history = factors.versions(db_conn, grid.series_id)
    assert [(v.version, v.variant, v.region_code, v.source) for v in history] == [
        (1, "hourly", grid.region, "test v1"),
        (2, "hourly", grid.region, "test v2"),
    ]
    assert float(history[0].value) == pytest.approx(sum(VALUES) / 4)

    # A stored hour can be neither changed nor removed.
    with pytest.raises(psycopg.errors.IntegrityConstraintViolation):
        db_conn.execute(
            "UPDATE grid_intensity_hours SET kg_co2e_per_kwh = 0 WHERE series_id = %s",
            (grid.series_id,),
        )
    # A version without hours (a plain restatement) is refused when it commits.
    with pytest.raises(FactorError, match="hourly series"):
        factors.restate(db_conn, grid.series_id, "0.5", "kgCO2e/kWh", None, None, "no", "test")
    assert len(factors.versions(db_conn, grid.series_id)) == 2


def test_each_minute_takes_its_hours_value_and_names_the_series_version(
    db_settings: DatabaseSettings, db_conn: psycopg.Connection, grid: Grid
) -> None:
    load_hourly_series(
        db_conn, grid.csv(dict(enumerate(VALUES))), series_id=grid.series_id, source="t"
    )
    # 30 minutes before the series, its 4 hours, 30 minutes after it.
    intervals = minutes_of(grid, START - timedelta(minutes=30), 30 + 240 + 30)
    pricing = price(db_settings, intervals, write=True)

    assert pricing.unpriced == []
    rows = pricing.rows
    assert len(rows) == 240
    assert rows.method == HOURLY_METHOD
    kwh = dict(zip(intervals.minute, intervals.kwh, strict=True))
    start_minute = int(START.timestamp()) // 60
    for minute, factor_id, version, kg, activity in zip(
        rows.minute, rows.factor_id, rows.factor_version, rows.kg_co2e, rows.kwh, strict=True
    ):
        hour = (minute - start_minute) // 60
        assert (factor_id, version) == (grid.series_id, 1)
        assert activity == kwh[minute]
        assert kg == pytest.approx(kwh[minute] * VALUES[hour], rel=1e-12)
    # Outside the series' span: handed back for the annual factors, untouched.
    assert sorted(pricing.rest.minute) == list(range(start_minute - 30, start_minute)) + list(
        range(start_minute + 240, start_minute + 270)
    )

    # The rows are in emissions_1m under the series version (its factor FK holds).
    stored = db_conn.execute(
        "SELECT count(*), sum(kg_co2e), min(factor_version), max(factor_version)"
        " FROM emissions_1m WHERE device_id = %s AND method = %s AND factor_id = %s"
        " AND superseded_at IS NULL",
        (grid.device, HOURLY_METHOD, grid.series_id),
    ).fetchone()
    assert stored is not None
    assert stored[0] == 240
    assert stored[1] == pytest.approx(sum(rows.kg_co2e))
    assert (stored[2], stored[3]) == (1, 1)

    # A reload prices under version 2; the version 1 figures stay, superseded.
    restated = {**dict(enumerate(VALUES)), 2: 0.40}
    load_hourly_series(db_conn, grid.csv(restated), series_id=grid.series_id, source="t")
    again = price(db_settings, intervals, write=True)
    assert set(again.rows.factor_version) == {2}
    by_version = dict(
        db_conn.execute(
            "SELECT factor_version, count(*) FILTER (WHERE superseded_at IS NULL)"
            " FROM emissions_1m WHERE device_id = %s GROUP BY 1",
            (grid.device,),
        ).fetchall()
    )
    assert by_version == {1: 0, 2: 240}
    old = db_conn.execute(
        "SELECT count(*) FROM emissions_1m WHERE device_id = %s AND factor_version = 1",
        (grid.device,),
    ).fetchone()
    assert old == (240,)


def test_a_gap_leaves_its_minutes_unpriced_and_reported(
    db_settings: DatabaseSettings, db_conn: psycopg.Connection, grid: Grid
) -> None:
    with pytest.raises(GridSeriesFormatError, match="gap"):
        load_hourly_series(
            db_conn, grid.csv({0: 0.5, 2: 0.5}), series_id=grid.series_id, source="t"
        )
    assert db_conn.execute(
        "SELECT count(*) FROM emission_factors WHERE factor_id = %s", (grid.series_id,)
    ).fetchone() == (0,)

    loaded = load_hourly_series(
        db_conn,
        grid.csv({0: 0.5, 1: 0.6, 3: 0.7}),  # hour 2 missing
        series_id=grid.series_id,
        source="t",
        allow_gaps=True,
    )
    assert loaded.gap_hours == 1
    intervals = minutes_of(grid, START, 240)
    pricing = price(db_settings, intervals, write=False)

    start_minute = int(START.timestamp()) // 60
    gap = range(start_minute + 120, start_minute + 180)
    assert sorted(pricing.rows.minute) == [
        m for m in range(start_minute, start_minute + 240) if m not in gap
    ]
    assert pricing.rest.minute == []  # inside the span: never handed to another factor
    assert len(pricing.unpriced) == 1
    report = pricing.unpriced[0]
    assert (report.device_id, report.first_minute, report.last_minute, report.minutes) == (
        grid.device,
        gap[0],
        gap[-1],
        60,
    )
    assert [str(ref) for ref in report.series] == [f"{grid.series_id}@v1"]
    assert "gap" in report.reason


def test_a_file_of_several_regions_loads_the_one_named(
    db_conn: psycopg.Connection, grid: Grid
) -> None:
    text = grid.csv(dict(enumerate(VALUES)), other_region=True)
    with pytest.raises(FactorError, match="--region"):
        load_hourly_series(db_conn, text, series_id=grid.series_id, source="t")
    loaded = load_hourly_series(
        db_conn, text, series_id=grid.series_id, source="t", region=grid.region
    )
    assert (loaded.region_code, loaded.hours) == (grid.region, 4)
    with pytest.raises(FactorError, match="series of"):
        load_hourly_series(db_conn, text, series_id=grid.series_id, source="t", region="CN-Other")
    assert date(2024, 7, 1) == loaded.first_hour.date()


def loaded_series(
    series_id: str, region: str, first_hour: int, values: list[float | None]
) -> LoadedSeries:
    """A loaded series from START + first_hour on; None leaves the hour out (a gap)."""
    base = int(START.timestamp()) // 3600 + first_hour
    by_hour = {base + k: v for k, v in enumerate(values) if v is not None}
    return LoadedSeries(
        HourlyGridSeries(FactorRef(series_id, 1), region, MappingProxyType(by_hour)),
        first_minute=base * 60,
        end_minute=(base + len(values)) * 60,
    )


def test_back_to_back_series_of_a_country_price_in_turn_and_overlaps_are_refused() -> None:
    grid = Grid("pure")
    sites = {grid.device: DeviceSite(grid.device, "electricity", "UTC", grid.region, "AQ")}
    intervals = minutes_of(grid, START, 180, kwh=1.0)
    start_minute = int(START.timestamp()) // 60
    # No series of the grid region: the country's two series, one after the other.
    first = loaded_series("A", "AQ", 0, [0.1])
    second = loaded_series("B", "AQ", 1, [0.2, 0.3])
    pricing = scope2_location_hourly(intervals, sites, [second, first])
    assert pricing.unpriced == []
    assert pricing.rest.minute == []
    rows = pricing.rows
    got = dict(zip(rows.minute, zip(rows.factor_id, rows.kg_co2e, strict=True), strict=True))
    kwh = dict(zip(intervals.minute, intervals.kwh, strict=True))
    for minute in intervals.minute:
        hour = (minute - start_minute) // 60
        factor_id, kg = got[minute]
        assert factor_id == ("A" if hour == 0 else "B")
        assert kg == pytest.approx(kwh[minute] * (0.1, 0.2, 0.3)[hour])

    # A series of the grid region wins over the country's; two that overlap price nothing.
    own = loaded_series("OWN", grid.region, 0, [0.9])
    assert set(scope2_location_hourly(intervals, sites, [first, own]).rows.factor_id) == {"OWN"}
    clash = scope2_location_hourly(
        intervals, sites, [own, loaded_series("OTHER", grid.region, 0, [0.8, 0.8])]
    )
    assert len(clash.rows) == 0
    assert sum(u.minutes for u in clash.unpriced) == 120
    assert "OWN" in clash.unpriced[0].reason
    assert "OTHER" in clash.unpriced[0].reason
    assert len(clash.rest.minute) == 60  # the third hour: no series spans it
