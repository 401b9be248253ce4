"""How the OPC UA adapter turns one node's DataValue into a reading (no server needed)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from edge.adapters.opcua import (
    UNECE_CODES,
    UNECE_NAMESPACE,
    MisconfiguredNodeError,
    NodePoint,
    decode,
    engineering_unit,
    quality_of,
    unece_unit_id,
)
from edge.registermaps.units import CONVERSIONS, conversion
from schemas.telemetry import Quality

NOW = datetime(2025, 6, 4, 8, 0, tzinfo=UTC)
MEASURED_AT = datetime(2025, 6, 4, 7, 59, 59, 500000, tzinfo=UTC)


def point(metric: str = "active_power", unit: str = "kW", canonical: str = "W") -> NodePoint:
    to_canonical = conversion(unit, canonical)
    assert to_canonical is not None
    text = "ns=2;s=Line2.Energy.P"
    return NodePoint(metric, text, ua.NodeId.from_string(text), unit, to_canonical)


def data_value(
    value: object,
    variant_type: ua.VariantType = ua.VariantType.Double,
    status: int = StatusCodes.Good,
    source_ts: datetime | None = MEASURED_AT,
) -> ua.DataValue:
    return ua.DataValue(
        ua.Variant(value, variant_type), StatusCode=ua.StatusCode(status), SourceTimestamp=source_ts
    )


def test_good_value_is_converted_to_the_canonical_unit() -> None:
    reading = decode(point(), data_value(41.25), NOW)

    assert reading is not None
    assert (reading.ts, reading.metric, reading.value, reading.unit, reading.quality) == (
        NOW,
        "active_power",
        41250.0,
        "W",
        Quality.GOOD,
    )


@pytest.mark.parametrize("source_ts", [None, datetime(1601, 1, 1, tzinfo=UTC), MEASURED_AT])
def test_the_poll_time_is_the_reading_time(source_ts: datetime | None) -> None:
    # Servers that stamp only on change would otherwise fold a steady value's polls into one.
    reading = decode(point(), data_value(1.0, source_ts=source_ts), NOW)

    assert reading is not None
    assert reading.ts == NOW


def test_an_offset_unit_converts_to_kelvin() -> None:
    reading = decode(point("temperature", "degC", "K"), data_value(20.0), NOW)

    assert reading.value == pytest.approx(293.15)
    assert reading.unit == "K"


def test_integer_types_are_numbers() -> None:
    reading = decode(point("current", "mA", "A"), data_value(61250, ua.VariantType.Int32), NOW)

    assert reading.value == pytest.approx(61.25)


@pytest.mark.parametrize(
    ("status", "quality"),
    [
        (StatusCodes.Good, Quality.GOOD),
        (StatusCodes.GoodClamped, Quality.GOOD),
        (StatusCodes.UncertainLastUsableValue, Quality.UNCERTAIN),
        (StatusCodes.UncertainEngineeringUnitsExceeded, Quality.UNCERTAIN),
        (StatusCodes.BadSensorFailure, Quality.BAD),
        (StatusCodes.BadCommunicationError, Quality.BAD),
        (StatusCodes.BadWaitingForInitialData, Quality.BAD),
    ],
)
def test_status_code_severity_is_the_quality(status: int, quality: Quality) -> None:
    assert quality_of(ua.StatusCode(status)) is quality
    assert decode(point(), data_value(5.0, status=status), NOW).quality is quality


def test_a_bad_value_keeps_the_number_the_server_sent_but_stays_bad() -> None:
    reading = decode(point(), data_value(5.0, status=StatusCodes.BadOutOfService), NOW)

    assert (reading.quality, reading.value) == (Quality.BAD, 5000.0)


@pytest.mark.parametrize(
    ("value", "variant_type", "status"),
    [
        (None, ua.VariantType.Null, StatusCodes.BadSensorFailure),  # Bad carries no value
        (None, ua.VariantType.Null, StatusCodes.Good),
        (math.nan, ua.VariantType.Double, StatusCodes.Good),
        (math.inf, ua.VariantType.Double, StatusCodes.UncertainLastUsableValue),
        (1e306, ua.VariantType.Double, StatusCodes.Good),  # overflows once converted to W
    ],
)
def test_no_usable_number_gives_no_reading(
    value: object, variant_type: ua.VariantType, status: int
) -> None:
    assert decode(point(), data_value(value, variant_type, status), NOW) is None


@pytest.mark.parametrize(
    ("value", "variant_type", "kind"),
    [
        (True, ua.VariantType.Boolean, "Boolean"),
        ("230.1", ua.VariantType.String, "String"),
        ([1.0, 2.0], ua.VariantType.Double, "an array of Double"),
    ],
)
def test_a_node_that_holds_no_number_is_a_configuration_error(
    value: object, variant_type: ua.VariantType, kind: str
) -> None:
    with pytest.raises(MisconfiguredNodeError) as error:
        decode(point(), data_value(value, variant_type), NOW)

    assert (
        str(error.value) == f"node ns=2;s=Line2.Energy.P (active_power) holds {kind}, not a number"
    )


@pytest.mark.parametrize(
    "status",
    [StatusCodes.BadNodeIdUnknown, StatusCodes.BadNotReadable, StatusCodes.BadUserAccessDenied],
)
def test_statuses_that_blame_the_config_are_errors(status: int) -> None:
    with pytest.raises(MisconfiguredNodeError) as error:
        decode(point(), data_value(None, ua.VariantType.Null, status), NOW)

    assert str(error.value) == (
        f"node ns=2;s=Line2.Energy.P (active_power): {ua.StatusCode(status).name}"
    )


def test_unece_unit_ids_follow_opc_ua_part_8() -> None:
    # Published values: kilowatt KWT, percent P1, one C62.
    assert unece_unit_id("KWT") == 4937556
    assert unece_unit_id("P1") == 20529
    assert unece_unit_id("C62") == 4404786


def test_every_unece_code_names_a_unit_the_config_accepts() -> None:
    accepted = {unit for units in CONVERSIONS.values() for unit in units}

    assert set(UNECE_CODES) <= accepted
    assert len(set(UNECE_CODES.values())) == len(UNECE_CODES)


@pytest.mark.parametrize(
    ("namespace", "unit_id", "expected"),
    [
        (UNECE_NAMESPACE, unece_unit_id("KWT"), "kW"),
        ("", unece_unit_id("CEL"), "degC"),  # many servers leave the namespace out
        (UNECE_NAMESPACE, unece_unit_id("A90"), None),  # gigawatt: not a configurable unit
        ("urn:vendor:units", unece_unit_id("KWT"), None),
        (UNECE_NAMESPACE, -1, None),
    ],
)
def test_engineering_units_are_read_by_unece_code(
    namespace: str, unit_id: int, expected: str | None
) -> None:
    info = ua.EUInformation(NamespaceUri=namespace, UnitId=unit_id)

    assert engineering_unit(info) == expected


def test_a_property_that_is_not_eu_information_names_no_unit() -> None:
    assert engineering_unit("kW") is None
    assert engineering_unit(None) is None
