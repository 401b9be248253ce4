"""Register parameters of counter devices, and China's Scope 1 coefficient from registry rows."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from carbonflow.emissions.errors import FactorInputError
from carbonflow.emissions.units import QuantityUnit
from carbonflow.factors.codes import Parameter
from carbonflow.factors.errors import FactorError
from carbonflow.factors.selection import FactorVersion
from services.stream.counter_routes import RegisterSettings, register_for
from services.stream.emissions import DeviceSite
from services.stream.fuel_emissions import china_coefficient

SHANGHAI_GAS = DeviceSite("g", "natural_gas", "Asia/Shanghai", "CN-East", "CN")


def settings(**kw: float | None) -> RegisterSettings:
    base: dict[str, float | None] = dict(
        modulus=None,
        max_rate_per_s=None,
        resolution=None,
        default_max_rate_per_s=None,
        default_resolution=None,
    )
    base.update(kw)
    return RegisterSettings(metric="active_energy_import", **base)  # type: ignore[arg-type]


def test_nothing_set_means_no_rollover_and_no_rate_limit() -> None:
    register, warning = register_for(settings(), 90.0)
    assert (register.modulus, register.max_rate_per_s, register.resolution) == (None, math.inf, 0)
    assert warning == ""


def test_the_device_overrides_its_metrics_default() -> None:
    register, _ = register_for(
        settings(max_rate_per_s=5.0, default_max_rate_per_s=100.0, default_resolution=1.0), 90.0
    )
    assert (register.max_rate_per_s, register.resolution) == (5.0, 1.0)
    register, _ = register_for(settings(default_max_rate_per_s=100.0), 90.0)
    assert register.max_rate_per_s == 100.0


def test_a_rate_that_could_hide_a_whole_turn_is_capped_with_a_warning() -> None:
    register, warning = register_for(settings(modulus=1000.0, max_rate_per_s=50.0), 90.0)
    assert register.modulus == 1000.0
    assert register.max_rate_per_s * 90.0 < 1000.0
    assert "capped" in warning


def version(
    factor_id: str, parameter: Parameter, value: str, unit: str, region: str = "CN"
) -> FactorVersion:
    return FactorVersion(
        factor_id=factor_id,
        version=1,
        region_code=region,
        carrier="natural_gas",
        parameter=parameter,
        gas="none",
        variant="standard",
        gwp_set="",
        unit=unit,
        value=Decimal(value),
        source_value=Decimal(value),
        source_unit=unit,
        valid_from=None,
        valid_until=None,
        source="t",
        source_detail="",
        reason="t",
        recorded_at=datetime(2024, 1, 1, tzinfo=UTC),
    )


CHINA = [
    version("NCV", Parameter.NCV, "0.038931", "GJ/Nm3"),
    version("CC", Parameter.CARBON_CONTENT, "15300", "kgC/TJ"),
    version("OF", Parameter.OXIDATION_FRACTION, "0.99", "fraction"),
]


def test_the_coefficient_is_ncv_times_carbon_times_oxidation_times_44_over_12() -> None:
    found = china_coefficient(CHINA, SHANGHAI_GAS, date(2024, 6, 3), QuantityUnit.NM3)
    assert found.kg_per_unit == pytest.approx(389.31e-4 * 15.3 * 0.99 * 44 / 12, rel=1e-12)
    assert str(found.primary) == "CC@v1"
    assert [str(r) for r in found.lineage] == ["CC@v1", "NCV@v1", "OF@v1"]
    assert found.proxy is False


def test_a_missing_parameter_or_a_mass_based_calorific_value_is_refused() -> None:
    with pytest.raises(FactorError, match="oxidation_fraction"):
        china_coefficient(CHINA[:2], SHANGHAI_GAS, date(2024, 6, 3), QuantityUnit.NM3)
    by_mass = [version("NCV_T", Parameter.NCV, "48", "GJ/t"), *CHINA[1:]]
    with pytest.raises(FactorInputError, match="basis"):
        china_coefficient(by_mass, SHANGHAI_GAS, date(2024, 6, 3), QuantityUnit.NM3)
