"""Scope 2: location-based (annual and hourly grid intensity) and market-based allocation."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from carbonflow.emissions import (
    AllocationError,
    ConsumptionInterval,
    ContractualInstrument,
    FactorInputError,
    FactorRef,
    Gas,
    GridFactor,
    GridSeriesFormatError,
    InstrumentKind,
    IntensityUnit,
    Method,
    MissingFactorError,
    allocate_market_based,
    parse_grid_intensity_csv,
    scope2_location_annual,
    scope2_location_hourly,
)

HEADER = "region_code,hour_start,kgco2e_per_kwh,source\n"
EAST_2023 = GridFactor(FactorRef("CN_GRID_EAST_2023", 1), 0.5500, IntensityUnit.KG_CO2_PER_KWH)
# China publishes no residual mix; the national factor excluding market-traded non-fossil
# electricity is the closest substitute.
RESIDUAL = GridFactor(
    FactorRef("CN_GRID_NATIONAL_EXCLMKT_2023", 1), 0.6096, IntensityUnit.KG_CO2_PER_KWH
)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def problems_of(text: str, **kwargs: bool) -> list[tuple[int, int | None, str]]:
    with pytest.raises(GridSeriesFormatError) as caught:
        parse_grid_intensity_csv(text, **kwargs)
    return [(p.line, p.column, p.message) for p in caught.value.problems]


# --- location-based, annual -------------------------------------------------------------


def test_annual_regional_factor() -> None:
    # 1234.5 kWh x 0.5500 kgCO2/kWh (CN_GRID_EAST_2023) = 678.975 kgCO2
    row = scope2_location_annual(1234.5, EAST_2023, coverage=0.9)
    assert row.kg_co2e == pytest.approx(678.975)
    assert row.method is Method.SCOPE2_LOCATION_ANNUAL
    assert row.factors == (FactorRef("CN_GRID_EAST_2023", 1),)
    assert row.coverage == 0.9
    assert row.kg_of(Gas.CO2) == pytest.approx(678.975)


@pytest.mark.parametrize(
    ("factor", "kg_for_1000_kwh"),
    [
        # CN_GRID_ETS_REPORTING_2022: 0.5703 tCO2/MWh = 0.5703 kgCO2/kWh
        (
            GridFactor(
                FactorRef("CN_GRID_ETS_REPORTING_2022", 1), 0.5703, IntensityUnit.T_CO2_PER_MWH
            ),
            570.3,
        ),
        # DE_IEA_SDES_2021: 384 gCO2/kWh = 0.384 kgCO2/kWh
        (GridFactor(FactorRef("DE_IEA_SDES_2021", 1), 384.0, IntensityUnit.G_CO2_PER_KWH), 384.0),
        # UK_DESNZ2025_ELEC: 0.17700 kgCO2e/kWh
        (
            GridFactor(FactorRef("UK_DESNZ2025_ELEC", 1), 0.177, IntensityUnit.KG_CO2E_PER_KWH),
            177.0,
        ),
    ],
)
def test_grid_factor_units_are_converted(factor: GridFactor, kg_for_1000_kwh: float) -> None:
    assert scope2_location_annual(1000.0, factor, coverage=1.0).kg_co2e == pytest.approx(
        kg_for_1000_kwh
    )


def test_unknown_unit_spelling_is_refused() -> None:
    with pytest.raises(ValueError, match="lb/MWh"):
        GridFactor(FactorRef("US_EGRID2022_CO2", 1), 823.149, IntensityUnit("lb/MWh"))


def test_negative_energy_is_refused() -> None:
    with pytest.raises(FactorInputError, match="kWh"):
        scope2_location_annual(-1.0, EAST_2023, coverage=1.0)


# --- hourly series: format and parser ----------------------------------------------------

GOOD_SERIES = (
    HEADER
    + "CN-East,2024-07-01T00:00:00Z,0.61,East grid dispatch 2024\n"
    + "CN-East,2024-07-01T01:00:00+00:00,0.58,East grid dispatch 2024\n"
    + '"CN-East",2024-07-01T02:00Z,0.52,"East grid dispatch, 2024 release"\n'
    + "\n"
    + "CN-South,2024-07-01T01:00:00Z,0.40,South grid dispatch 2024\n"
)


def test_parses_a_valid_series_and_computes_hourly_emissions() -> None:
    parsed = parse_grid_intensity_csv(GOOD_SERIES)
    assert parsed.regions() == ("CN-East", "CN-South")
    assert parsed.gaps == ()
    east = parsed.series("CN-East", FactorRef("HOURLY_CN-East_2024", 3))
    # 02:15-02:30 UTC, 12.5 kWh x 0.52 kgCO2e/kWh = 6.5 kgCO2e
    row = scope2_location_hourly(
        12.5, utc(2024, 7, 1, 2, 15), utc(2024, 7, 1, 2, 30), east, coverage=0.5
    )
    assert row.kg_co2e == pytest.approx(6.5)
    assert row.method is Method.SCOPE2_LOCATION_HOURLY
    assert row.factors == (FactorRef("HOURLY_CN-East_2024", 3),)
    assert row.coverage == 0.5
    assert parsed.rows[2].source == "East grid dispatch, 2024 release"


def test_hourly_lookup_outside_the_series_is_reported() -> None:
    east = parse_grid_intensity_csv(GOOD_SERIES).series("CN-East", FactorRef("H", 1))
    with pytest.raises(MissingFactorError, match="2024-07-01T03:00:00"):
        scope2_location_hourly(
            1.0, utc(2024, 7, 1, 3, 0), utc(2024, 7, 1, 3, 1), east, coverage=1.0
        )


def test_hourly_interval_may_not_cross_an_hour() -> None:
    east = parse_grid_intensity_csv(GOOD_SERIES).series("CN-East", FactorRef("H", 1))
    with pytest.raises(FactorInputError, match="hour boundary"):
        scope2_location_hourly(
            1.0, utc(2024, 7, 1, 0, 59), utc(2024, 7, 1, 1, 1), east, coverage=1.0
        )
    # A whole hour is fine: the end is the next hour's start.
    whole = scope2_location_hourly(10.0, utc(2024, 7, 1, 1), utc(2024, 7, 1, 2), east, coverage=1.0)
    assert whole.kg_co2e == pytest.approx(5.8)


def test_header_must_match() -> None:
    assert problems_of("region,hour,value,source\nCN-East,2024-07-01T00:00Z,0.5,x\n") == [
        (1, None, "header must be exactly region_code,hour_start,kgco2e_per_kwh,source")
    ]
    assert problems_of("")[0][0] == 1


def test_errors_name_line_and_column() -> None:
    text = (
        HEADER
        + "CN-East,2024-07-01T00:00:00Z,0.61,src\n"  # line 2: fine
        + "CN-East,2024-07-01T01:00:00+08:00,0.58,src\n"  # line 3: not UTC
        + "CN-East,2024-07-01T02:30:00Z,0.52,src\n"  # line 4: not on the hour
        + "CN-East,yesterday,abc,\n"  # line 5: three bad fields
        + "CN-East,2024-07-01T03:00:00Z,550,src\n"  # line 6: gCO2e/kWh by mistake
        + "CN-East,2024-07-01T04:00:00Z,0.5\n"  # line 7: a field missing
        + ",2024-07-01T05:00:00Z,nan,src\n"  # line 8: no region, NaN value
    )
    found = problems_of(text)
    located = {(line, column) for line, column, _ in found}
    assert located == {
        (3, 2),
        (4, 2),
        (5, 2),
        (5, 3),
        (5, 4),
        (6, 3),
        (7, None),
        (8, 1),
        (8, 3),
    }
    messages = {(line, column): message for line, column, message in found}
    assert "UTC" in messages[(3, 2)]
    assert "start of an hour" in messages[(4, 2)]
    assert "ISO 8601" in messages[(5, 2)]
    assert "2.5" in messages[(6, 3)]
    assert "expected 4 fields, found 3" in messages[(7, None)]


def test_error_text_names_line_column_and_column_name() -> None:
    with pytest.raises(GridSeriesFormatError) as caught:
        parse_grid_intensity_csv(HEADER + "CN-East,2024-07-01T00:00:00Z,-0.1,src\n")
    assert "line 2, column 3 (kgco2e_per_kwh)" in str(caught.value)


def test_duplicates_are_detected() -> None:
    text = (
        HEADER
        + "CN-East,2024-07-01T00:00:00Z,0.61,a\n"
        + "CN-East,2024-07-01T01:00:00Z,0.58,a\n"
        + "CN-East,2024-07-01T00:00:00+00:00,0.60,b\n"
    )
    [(line, column, message)] = problems_of(text)
    assert (line, column) == (4, 2)
    assert "already on line 2" in message


def test_gaps_are_refused_unless_allowed() -> None:
    text = (
        HEADER
        + "CN-East,2024-07-01T05:00:00Z,0.50,a\n"
        + "CN-East,2024-07-01T00:00:00Z,0.61,a\n"  # rows in any order
        + "CN-East,2024-07-01T01:00:00Z,0.58,a\n"
        + "CN-South,2024-07-01T09:00:00Z,0.40,a\n"
    )
    [(line, column, message)] = problems_of(text)
    assert (line, column) == (2, 2)
    assert "2024-07-01T02:00:00+00:00 to 2024-07-01T04:00:00+00:00 (3 h)" in message

    parsed = parse_grid_intensity_csv(text, allow_gaps=True)
    [gap] = parsed.gaps
    assert (gap.region_code, gap.first_missing, gap.last_missing) == (
        "CN-East",
        utc(2024, 7, 1, 2),
        utc(2024, 7, 1, 4),
    )
    east = parsed.series("CN-East", FactorRef("H", 1))
    with pytest.raises(MissingFactorError):
        east.intensity_at(utc(2024, 7, 1, 3, 30))
    minute = int(utc(2024, 7, 1).timestamp()) // 60
    assert east.breakpoints() == [
        (minute, 0.61),
        (minute + 60, 0.58),
        (minute + 120, None),
        (minute + 300, 0.50),
        (minute + 360, None),
    ]


def test_malformed_quoting_is_reported_with_its_line() -> None:
    found = problems_of(HEADER + "CN-East,2024-07-01T00:00:00Z,0.5,src\n" + 'CN-East,"2024\n')
    assert found[0][0] == 3
    assert "malformed CSV" in found[0][2]


def test_problem_list_is_capped() -> None:
    rows = "".join(f"CN-East,not-a-time-{k},0.5,src\n" for k in range(30))
    with pytest.raises(GridSeriesFormatError) as caught:
        parse_grid_intensity_csv(HEADER + rows, max_problems=10)
    assert len(caught.value.problems) == 10
    assert caught.value.truncated


# --- market-based ---------------------------------------------------------------------

GEC = ContractualInstrument(
    FactorRef("GEC-2024-0007", 1),
    InstrumentKind.CERTIFICATE,
    utc(2024, 1, 1),
    utc(2025, 1, 1),
    volume_kwh=12_000.0,
    kg_co2e_per_kwh=0.0,
)
WIND_PPA = ContractualInstrument(
    FactorRef("PPA-WIND-FEB", 1),
    InstrumentKind.PPA,
    utc(2024, 2, 1),
    utc(2024, 3, 1),
    volume_kwh=5_000.0,
    kg_co2e_per_kwh=0.0,
)
SUPPLIER = ContractualInstrument(
    FactorRef("SUPPLIER-2024H1", 2),
    InstrumentKind.SUPPLIER,
    utc(2024, 1, 1),
    utc(2024, 3, 1),
    volume_kwh=None,
    kg_co2e_per_kwh=0.42,
)


def month(m: int, kwh: float, coverage: float = 1.0) -> ConsumptionInterval:
    return ConsumptionInterval(utc(2024, m, 1), utc(2024, m + 1, 1), kwh, coverage)


def test_certificates_and_ppa_then_supplier_then_residual() -> None:
    # Jan 10,000 kWh: certificate (12,000 valid all year) covers 10,000 -> 0 kg; 2,000 left
    # Feb 10,000 kWh: PPA ends first -> 5,000; certificate's last 2,000; supplier 3,000 x 0.42
    #                 = 1,260 kg
    # Mar 10,000 kWh: no instrument left or valid -> residual 10,000 x 0.6096 = 6,096 kg
    result = allocate_market_based(
        [month(3, 10_000.0), month(1, 10_000.0, coverage=0.98), month(2, 10_000.0)],
        [SUPPLIER, GEC, WIND_PPA],
        RESIDUAL,
    )
    jan, feb, mar = result.intervals
    assert [(a.ref.factor_id, a.kwh) for a in jan.allocations] == [("GEC-2024-0007", 10_000.0)]
    assert [(a.ref.factor_id, a.kwh) for a in feb.allocations] == [
        ("PPA-WIND-FEB", 5_000.0),
        ("GEC-2024-0007", 2_000.0),
        ("SUPPLIER-2024H1", 3_000.0),
    ]
    assert [(a.ref.factor_id, a.kind, a.kwh) for a in mar.allocations] == [
        ("CN_GRID_NATIONAL_EXCLMKT_2023", None, 10_000.0)
    ]
    assert [r.row.kg_co2e for r in result.intervals] == pytest.approx([0.0, 1260.0, 6096.0])
    assert result.kg_co2e == pytest.approx(7356.0)
    assert result.kwh == 30_000.0
    assert result.residual_kwh == 10_000.0
    assert result.residual_factor == RESIDUAL.ref

    uses = {u.ref.factor_id: (u.covered_kwh, u.remaining_kwh) for u in result.instruments}
    assert uses == {
        "PPA-WIND-FEB": (5_000.0, 0.0),
        "GEC-2024-0007": (12_000.0, 0.0),
        "SUPPLIER-2024H1": (3_000.0, None),
    }
    assert all(r.row.method is Method.SCOPE2_MARKET for r in result.intervals)
    assert jan.row.coverage == 0.98
    assert feb.row.factors == (WIND_PPA.ref, GEC.ref, SUPPLIER.ref)
    assert mar.row.factors == (RESIDUAL.ref,)
    assert mar.row.kg_of(Gas.CO2) == pytest.approx(6096.0)


def test_volume_supplier_comes_before_the_unlimited_one() -> None:
    green_tariff = ContractualInstrument(
        FactorRef("GREEN-TARIFF", 1),
        InstrumentKind.SUPPLIER,
        utc(2024, 1, 1),
        utc(2024, 12, 1),
        volume_kwh=1_000.0,
        kg_co2e_per_kwh=0.05,
    )
    result = allocate_market_based([month(1, 4_000.0)], [SUPPLIER, green_tariff], RESIDUAL)
    [jan] = result.intervals
    # 1,000 x 0.05 + 3,000 x 0.42 = 50 + 1,260 = 1,310 kg
    assert [(a.ref.factor_id, a.kwh) for a in jan.allocations] == [
        ("GREEN-TARIFF", 1_000.0),
        ("SUPPLIER-2024H1", 3_000.0),
    ]
    assert jan.row.kg_co2e == pytest.approx(1310.0)
    assert result.residual_kwh == 0.0


def test_interval_not_wholly_inside_a_period_is_not_covered_by_it() -> None:
    straddling = ConsumptionInterval(utc(2024, 2, 29, 23, 59), utc(2024, 3, 1, 0, 1), 2.0, 1.0)
    result = allocate_market_based([straddling], [WIND_PPA], RESIDUAL)
    assert result.residual_kwh == 2.0
    assert result.kg_co2e == pytest.approx(2.0 * 0.6096)


def test_zero_consumption_still_names_its_factor() -> None:
    result = allocate_market_based([month(3, 0.0)], [GEC], RESIDUAL)
    assert result.intervals[0].row.factors == (RESIDUAL.ref,)
    assert result.intervals[0].row.kg_co2e == 0.0


def test_overlapping_unlimited_supplier_factors_are_ambiguous() -> None:
    other = ContractualInstrument(
        FactorRef("SUPPLIER-B", 1),
        InstrumentKind.SUPPLIER,
        utc(2024, 2, 15),
        utc(2024, 6, 1),
        volume_kwh=None,
        kg_co2e_per_kwh=0.3,
    )
    with pytest.raises(AllocationError, match="SUPPLIER-2024H1@v2 and SUPPLIER-B@v1"):
        allocate_market_based([month(1, 1.0)], [SUPPLIER, other], RESIDUAL)


def test_instrument_checks() -> None:
    with pytest.raises(FactorInputError, match="needs a volume"):
        ContractualInstrument(
            FactorRef("GEC-X", 1),
            InstrumentKind.CERTIFICATE,
            utc(2024, 1, 1),
            utc(2025, 1, 1),
            volume_kwh=None,
            kg_co2e_per_kwh=0.0,
        )
    with pytest.raises(FactorInputError, match="end after"):
        ContractualInstrument(
            FactorRef("PPA-X", 1),
            InstrumentKind.PPA,
            utc(2024, 1, 1),
            utc(2024, 1, 1),
            volume_kwh=1.0,
            kg_co2e_per_kwh=0.0,
        )
    with pytest.raises(FactorInputError, match="timezone-aware"):
        ConsumptionInterval(datetime(2024, 1, 1), datetime(2024, 1, 2), 1.0, 1.0)
    with pytest.raises(AllocationError, match="only once"):
        allocate_market_based([month(1, 1.0)], [GEC, GEC], RESIDUAL)


def test_market_totals_add_up_over_many_intervals() -> None:
    start = utc(2024, 1, 1)
    minutes = [
        ConsumptionInterval(
            start + timedelta(minutes=k), start + timedelta(minutes=k + 1), 0.5 + (k % 7), 1.0
        )
        for k in range(5_000)
    ]
    result = allocate_market_based(minutes, [GEC, SUPPLIER], RESIDUAL)
    total = sum(c.kwh for c in minutes)
    assert total > 12_000.0
    # The certificate (12,000 kWh) runs out first; the supplier factor takes the rest.
    assert sum(u.covered_kwh for u in result.instruments) == pytest.approx(total)
    assert result.kg_co2e == pytest.approx((total - 12_000.0) * 0.42)
    assert not any(math.isnan(r.row.kg_co2e) for r in result.intervals)


def test_hourly_interval_needs_aware_times() -> None:
    east = parse_grid_intensity_csv(GOOD_SERIES).series("CN-East", FactorRef("H", 1))
    with pytest.raises(FactorInputError, match="timezone-aware"):
        scope2_location_hourly(
            1.0, datetime(2024, 7, 1, 1), datetime(2024, 7, 1, 1, 1), east, coverage=1.0
        )
