"""Sparkplug metric names and units onto canonical metrics and SI units."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas import DeadLetterReason
from services.ingest.sparkplug.mapping import (
    ConfiguredMetric,
    Mapped,
    MetricMapper,
    Unmapped,
    declared_unit,
    is_control_metric,
)


def resolve(name: str, unit: str | None = None, **configured: ConfiguredMetric) -> Mapped:
    mapped = MetricMapper(configured).resolve(name, unit)
    assert isinstance(mapped, Mapped), mapped
    return mapped


@pytest.mark.parametrize(
    ("name", "metric"),
    [
        ("active_power", "active_power"),
        ("Active Power", "active_power"),
        ("ActivePower", "active_power"),
        ("active-power", "active_power"),
        ("Total Active Energy", "active_energy_import"),
        ("Power Factor", "power_factor"),
        ("frequency", "frequency"),
        ("Temperature", "temperature"),
    ],
)
def test_canonical_and_common_names_are_found(name: str, metric: str) -> None:
    assert resolve(name).metric == metric


def test_without_a_unit_the_value_is_taken_as_canonical() -> None:
    mapped = resolve("active_power")
    assert (mapped.unit, mapped.convert(1500.0)) == ("W", 1500.0)


def test_a_unit_declared_by_the_birth_is_converted() -> None:
    assert resolve("Active Power", "kW").convert(1.5) == 1500.0
    assert resolve("Total Active Energy", "MWh").convert(2.0) == 2_000_000.0
    assert resolve("Temperature", "°C").convert(20.0) == pytest.approx(293.15)
    assert resolve("Power Factor", "%").convert(95.0) == pytest.approx(0.95)


def test_a_bracketed_unit_in_the_name_is_used_when_the_birth_declares_none() -> None:
    mapped = resolve("Active Power [kW]")
    assert (mapped.metric, mapped.convert(2.0)) == ("active_power", 2000.0)
    assert resolve("Energy (kWh)").convert(3.0) == 3000.0
    # The birth's declaration wins over the name.
    assert resolve("Active Power [kW]", "W").convert(2.0) == 2.0


def test_configured_exact_names_come_first_with_their_unit() -> None:
    configured = {"Meter 1/Total kW": ConfiguredMetric(metric="active_power", unit="kW")}
    mapped = MetricMapper(configured).resolve("Meter 1/Total kW", None)
    assert isinstance(mapped, Mapped)
    assert (mapped.metric, mapped.convert(0.5)) == ("active_power", 500.0)


def test_names_in_folders_are_not_guessed_from_their_last_part() -> None:
    mapped = MetricMapper().resolve("Phase A/Voltage", None)
    assert isinstance(mapped, Unmapped)
    assert mapped.reason is DeadLetterReason.UNKNOWN_METRIC


def test_units_that_do_not_fit_the_metric_are_a_unit_mismatch() -> None:
    mapped = MetricMapper().resolve("Active Power", "kWh")
    assert isinstance(mapped, Unmapped)
    assert mapped.reason is DeadLetterReason.UNIT_MISMATCH
    assert "kWh" in mapped.detail


def test_unit_like_names_are_not_mapped() -> None:
    assert isinstance(MetricMapper().resolve("kW", None), Unmapped)


def test_configuration_is_checked_when_the_mapper_is_built() -> None:
    with pytest.raises(ValidationError):
        ConfiguredMetric(metric="horsepower")
    with pytest.raises(ValueError, match="cannot be converted"):
        MetricMapper({"x": ConfiguredMetric(metric="active_power", unit="furlongs")})


def test_control_metrics_are_recognised() -> None:
    for name in ("bdSeq", "Node Control/Rebirth", "Device Control/Scan Rate", "Properties/Hw"):
        assert is_control_metric(name)
    assert not is_control_metric("Active Power")


def test_declared_unit_reads_the_usual_property_names() -> None:
    assert declared_unit({"engUnit": "kW"}) == "kW"
    assert declared_unit({"engUnits": "kWh"}) == "kWh"
    assert declared_unit({"Quality": 192}) is None
