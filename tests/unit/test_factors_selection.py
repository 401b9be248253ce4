"""Which factor version answers a lookup: region fallback, periods, restatements, proxies."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from carbonflow.factors.codes import Parameter
from carbonflow.factors.errors import AmbiguousFactorError, FactorNotFoundError
from carbonflow.factors.selection import (
    FactorVersion,
    Level,
    reference_day,
    region_chain,
    select,
)

RECORDED = datetime(2026, 1, 1, tzinfo=UTC)


def _version(
    factor_id: str,
    region: str,
    year: int | None,
    value: str,
    version: int = 1,
    valid: tuple[date | None, date | None] | None = None,
) -> FactorVersion:
    valid_from, valid_until = valid or (
        (date(year, 1, 1), date(year + 1, 1, 1)) if year else (None, None)
    )
    return FactorVersion(
        factor_id=factor_id, version=version, region_code=region, carrier="electricity",
        parameter=Parameter.EMISSION_FACTOR, gas="CO2", variant="standard", gwp_set="",
        unit="kgCO2/kWh", value=Decimal(value), source_value=Decimal(value),
        source_unit="kgCO2/kWh", valid_from=valid_from, valid_until=valid_until,
        source="test", source_detail="", reason="test", recorded_at=RECORDED,
    )  # fmt: skip


EAST_2022 = _version("EAST_2022", "CN-East", 2022, "0.5617")
EAST_2023 = _version("EAST_2023", "CN-East", 2023, "0.5500")
CN_2021 = _version("CN_2021", "CN", 2021, "0.5568")
CN_2024 = _version("CN_2024", "CN", 2024, "0.5000")
ALL = [EAST_2022, EAST_2023, CN_2021, CN_2024]
CHAIN = region_chain("CN-East", "CN")


def test_the_chain_runs_from_grid_region_to_country_to_global() -> None:
    assert region_chain("CN-East", "CN") == [
        ("CN-East", Level.GRID_REGION), ("CN", Level.COUNTRY), ("GLOBAL", Level.GLOBAL),
    ]  # fmt: skip
    assert region_chain("PL", "pl") == [("PL", Level.GRID_REGION), ("GLOBAL", Level.GLOBAL)]
    assert region_chain(None, "DE") == [("DE", Level.COUNTRY), ("GLOBAL", Level.GLOBAL)]


def test_the_grid_region_factor_in_force_answers() -> None:
    match = select(ALL, CHAIN, date(2023, 6, 1))
    assert (match.factor_id, match.level, match.proxy) == ("EAST_2023", Level.GRID_REGION, False)
    assert select(ALL, CHAIN, date(2022, 12, 31)).factor_id == "EAST_2022"


def test_without_a_regional_factor_the_country_answers() -> None:
    match = select(ALL, CHAIN, date(2021, 3, 1))
    assert (match.factor_id, match.level, match.proxy) == ("CN_2021", Level.COUNTRY, False)
    # An exact country factor beats a stale regional one.
    assert select(ALL, CHAIN, date(2024, 3, 1)).factor_id == "CN_2024"


def test_region_codes_match_whatever_their_case() -> None:
    assert select(ALL, region_chain("cn-east", "cn"), date(2023, 1, 1)).factor_id == "EAST_2023"


def test_after_the_newest_period_the_latest_factor_answers_as_a_proxy() -> None:
    match = select(ALL, CHAIN, date(2026, 2, 1))
    assert (match.factor_id, match.level, match.proxy) == ("EAST_2023", Level.GRID_REGION, True)
    assert "PROXY" in match.note
    assert "2023-01-01 to 2023-12-31" in match.note


def test_no_factor_is_used_before_its_period_and_proxies_can_be_refused() -> None:
    with pytest.raises(FactorNotFoundError, match="2020-05-01"):
        select(ALL, CHAIN, date(2020, 5, 1))
    with pytest.raises(FactorNotFoundError, match="proxies not allowed"):
        select(ALL, CHAIN, date(2026, 2, 1), allow_proxy=False)


def test_an_open_ended_global_factor_answers_any_day() -> None:
    ipcc = _version("IPCC", "GLOBAL", None, "56100")
    match = select([ipcc], region_chain("CN-East", "CN"), date(1999, 1, 1))
    assert (match.factor_id, match.level, match.proxy) == ("IPCC", Level.GLOBAL, False)


def test_a_restatement_replaces_the_period_it_covers_only() -> None:
    # Version 2 corrects the second half of 2023; the first half keeps version 1.
    v2 = _version("EAST_2023", "CN-East", None, "0.5400", version=2,
                  valid=(date(2023, 7, 1), date(2024, 1, 1)))  # fmt: skip
    candidates = [*ALL, v2]
    assert select(candidates, CHAIN, date(2023, 3, 1)).version == 1
    assert select(candidates, CHAIN, date(2023, 9, 1)).version == 2
    assert select(candidates, CHAIN, date(2025, 1, 1)).version == 2  # proxy of the newest


def test_two_factors_in_force_at_one_level_are_ambiguous() -> None:
    twin = _version("EAST_2023_OTHER", "CN-East", 2023, "0.6")
    with pytest.raises(AmbiguousFactorError, match="EAST_2023 v1, EAST_2023_OTHER v1"):
        select([*ALL, twin], CHAIN, date(2023, 5, 5))


def test_the_day_of_a_moment_is_taken_in_the_site_time_zone() -> None:
    moment = datetime(2022, 12, 31, 17, 30, tzinfo=UTC)  # 01:30 on 1 January in Shanghai
    assert reference_day(moment, "Asia/Shanghai") == date(2023, 1, 1)
    assert reference_day(moment) == date(2022, 12, 31)
    with pytest.raises(ValueError, match="timezone-aware"):
        reference_day(datetime(2023, 1, 1))
