"""Register maps: the shipped maps load and decode, and every mistake in a map names its field."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
from pymodbus.client.mixin import ModbusClientMixin

from edge.config import ConfigFileError, load_config
from edge.registermaps import (
    DecodedValue,
    DecodeProblem,
    MissingMetricsError,
    ReadBlock,
    ReadPlan,
    RegisterMap,
    RegisterMapError,
    builtin_map_names,
    encode_raw,
    load_register_map,
)
from edge.registermaps.model import CUMULATIVE_METRICS, REGISTER_COUNTS
from edge.registermaps.units import conversion
from schemas.telemetry import METRIC_UNITS, Quality

CODEC = ModbusClientMixin
METER = '[meter]\nmanufacturer = "Example"\nmodel = "M1"\nsource = "M1 manual rev 3"\n'


def map_file(tmp_path: Path, body: str, name: str = "meter.toml") -> Path:
    path = tmp_path / name
    path.write_text(METER + textwrap.dedent(body), encoding="utf-8")
    return path


def problems_of(tmp_path: Path, body: str) -> tuple[str, ...]:
    with pytest.raises(RegisterMapError) as info:
        load_register_map(map_file(tmp_path, body))
    return info.value.problems


def metric(name: str, **fields: object) -> str:
    values = {
        "address": 0,
        "register_type": "input",
        "data_type": "float32",
        "unit": METRIC_UNITS[name],
        "kind": "cumulative" if name in CUMULATIVE_METRICS else "instantaneous",
        **fields,
    }
    lines = [f"[metrics.{name}]"]
    for key, value in values.items():
        lines.append(f"{key} = {value!r}".replace("'", '"'))
    return "\n".join(lines) + "\n"


def decode_one(register_map: RegisterMap, name: str, words: list[int]) -> object:
    plan = ReadPlan(register_map, [name])
    (block,) = plan.blocks
    (result,) = plan.decode({block: words})
    return result


# --- the shipped maps ------------------------------------------------------------------


def test_both_shipped_maps_are_there_and_load() -> None:
    assert builtin_map_names() == ["eastron_sdm630", "schneider_iem3000"]
    for name in builtin_map_names():
        register_map = load_register_map(name)
        assert register_map.meter.source
        assert register_map.metrics


def test_sdm630_addresses_are_the_manuals_input_registers_minus_30001() -> None:
    register_map = load_register_map("eastron_sdm630")
    manual = {
        "voltage": 30001,
        "current": 30047,
        "active_power": 30053,
        "apparent_power": 30057,
        "reactive_power": 30061,
        "power_factor": 30063,
        "frequency": 30071,
        "active_energy_import": 30073,
    }
    assert {name: r.address + 30001 for name, r in register_map.metrics.items()} == manual
    assert {r.register_type for r in register_map.metrics.values()} == {"input"}
    assert {r.data_type for r in register_map.metrics.values()} == {"float32"}
    assert register_map.reads.max_registers == 80


def test_iem3000_addresses_are_the_manuals_register_numbers_minus_1() -> None:
    register_map = load_register_map("schneider_iem3000")
    manual = {
        "current": 3010,
        "voltage": 3036,
        "active_power": 3060,
        "reactive_power": 3068,
        "apparent_power": 3076,
        "frequency": 3110,
        "active_energy_import": 3204,
    }
    assert {name: r.address + 1 for name, r in register_map.metrics.items()} == manual
    assert {r.register_type for r in register_map.metrics.values()} == {"holding"}
    assert register_map.metrics["active_energy_import"].data_type == "int64"
    assert "power_factor" not in register_map.metrics  # four-quadrant encoding


# Raw values in the meter's own unit; the expected value applies the map's conversion.
RAW_SAMPLES: Mapping[str, float] = {
    "voltage": 230.5,
    "current": 17.25,
    "active_power": -4.5,
    "reactive_power": 1.75,
    "apparent_power": 6.0,
    "power_factor": -0.5,
    "frequency": 50.0,
    "active_energy_import": 123_456,
}


@pytest.mark.parametrize("name", ["eastron_sdm630", "schneider_iem3000"])
def test_every_metric_of_a_shipped_map_decodes_what_was_encoded(name: str) -> None:
    register_map = load_register_map(name)
    plan = ReadPlan(register_map, list(register_map.metrics))
    image: dict[tuple[str, int], int] = {}
    for metric_name, register in register_map.metrics.items():
        for offset, word in enumerate(encode_raw(register, RAW_SAMPLES[metric_name])):
            image[(register.register_type, register.address + offset)] = word
    registers = {
        block: [image.get((block.register_type, block.address + i), 0) for i in range(block.count)]
        for block in plan.blocks
    }

    results = {result.metric: result for result in plan.decode(registers)}

    assert set(results) == set(register_map.metrics)
    for metric_name, result in results.items():
        assert isinstance(result, DecodedValue)
        register = register_map.metrics[metric_name]
        convert = conversion(register.unit, METRIC_UNITS[metric_name])
        assert convert is not None
        assert result.unit == METRIC_UNITS[metric_name]
        assert result.quality is Quality.GOOD
        assert result.value == pytest.approx(convert.apply(RAW_SAMPLES[metric_name]))


# --- decoding --------------------------------------------------------------------------


def test_word_and_byte_order_follow_the_map(tmp_path: Path) -> None:
    body = metric("active_power", data_type="int32", word_order="little") + metric(
        "frequency", address=10, data_type="float32", byte_order="little"
    )
    register_map = load_register_map(map_file(tmp_path, body))
    # Encoded with pymodbus directly, so decoding is not checked against its own inverse.
    low_word_first = CODEC.convert_to_registers(-70_000, CODEC.DATATYPE.INT32, "little")
    assert decode_one(register_map, "active_power", low_word_first) == DecodedValue(
        "active_power", -70_000.0, "W", Quality.GOOD
    )
    big = CODEC.convert_to_registers(49.5, CODEC.DATATYPE.FLOAT32)
    swapped = [((word & 0xFF) << 8) | (word >> 8) for word in big]
    assert decode_one(register_map, "frequency", swapped) == DecodedValue(
        "frequency", 49.5, "Hz", Quality.GOOD
    )


@pytest.mark.parametrize("data_type", sorted(REGISTER_COUNTS))
def test_every_data_type_round_trips(tmp_path: Path, data_type: str) -> None:
    register_map = load_register_map(map_file(tmp_path, metric("current", data_type=data_type)))
    register = register_map.metrics["current"]
    words = encode_raw(register, 1234)
    assert len(words) == REGISTER_COUNTS[data_type]
    result = decode_one(register_map, "current", words)
    assert isinstance(result, DecodedValue)
    assert result.value == 1234.0


def test_scale_and_unit_conversion_including_an_offset(tmp_path: Path) -> None:
    body = metric("temperature", data_type="int16", scale=0.1, unit="degC") + metric(
        "active_energy_import", address=4, data_type="uint32", scale=0.01, unit="MWh"
    )
    register_map = load_register_map(map_file(tmp_path, body))
    cold = CODEC.convert_to_registers(-125, CODEC.DATATYPE.INT16)
    result = decode_one(register_map, "temperature", cold)
    assert isinstance(result, DecodedValue)
    assert result.value == pytest.approx(260.65)
    assert result.unit == "K"
    counter = CODEC.convert_to_registers(123_456, CODEC.DATATYPE.UINT32)
    result = decode_one(register_map, "active_energy_import", counter)
    assert isinstance(result, DecodedValue)
    assert result.value == pytest.approx(1_234_560_000.0)


def test_scale_exponent_register_applies_a_power_of_ten(tmp_path: Path) -> None:
    body = (
        metric(
            "active_power",
            address=40,
            register_type="holding",
            data_type="int16",
        )
        + '[metrics.active_power.scale_exponent]\naddress = 43\nregister_type = "holding"\n'
    )
    register_map = load_register_map(map_file(tmp_path, body))
    plan = ReadPlan(register_map, ["active_power"])
    assert plan.blocks == (
        ReadBlock("holding", 40, 1),
        ReadBlock("holding", 43, 1),
    )
    value = CODEC.convert_to_registers(-1234, CODEC.DATATYPE.INT16)
    exponent = CODEC.convert_to_registers(-1, CODEC.DATATYPE.INT16)
    (result,) = plan.decode({plan.blocks[0]: value, plan.blocks[1]: exponent})
    assert result == DecodedValue("active_power", pytest.approx(-123.4), "W", Quality.GOOD)
    # SunSpec's "not implemented" scale factor is no exponent.
    unset = CODEC.convert_to_registers(-32768, CODEC.DATATYPE.INT16)
    (result,) = plan.decode({plan.blocks[0]: value, plan.blocks[1]: unset})
    assert isinstance(result, DecodeProblem)
    assert "-32768" in result.reason


def test_non_finite_values_are_problems_and_implausible_ones_are_bad(tmp_path: Path) -> None:
    body = (
        metric("power_factor", valid_min=-1, valid_max=1)
        + metric("active_energy_import", address=2)
        + metric("voltage", address=4)
    )
    register_map = load_register_map(map_file(tmp_path, body))

    def words(value: float) -> list[int]:
        return CODEC.convert_to_registers(value, CODEC.DATATYPE.FLOAT32)

    nan = decode_one(register_map, "voltage", words(math.nan))
    assert isinstance(nan, DecodeProblem)
    assert "nan" in nan.reason
    inf = decode_one(register_map, "voltage", words(-math.inf))
    assert isinstance(inf, DecodeProblem)

    high = decode_one(register_map, "power_factor", words(1.5))
    assert isinstance(high, DecodedValue)
    assert (high.value, high.quality) == (1.5, Quality.BAD)
    assert high.reason is not None
    assert "maximum 1" in high.reason
    negative = decode_one(register_map, "active_energy_import", words(-2.0))
    assert isinstance(negative, DecodedValue)
    assert negative.quality is Quality.BAD


def test_a_huge_value_that_overflows_after_scaling_is_a_problem(tmp_path: Path) -> None:
    body = metric("active_power", data_type="float64", unit="MW")
    register_map = load_register_map(map_file(tmp_path, body))
    words = CODEC.convert_to_registers(1.7e305, CODEC.DATATYPE.FLOAT64)
    result = decode_one(register_map, "active_power", words)
    assert isinstance(result, DecodeProblem)
    assert "overflows" in result.reason


# --- grouping reads --------------------------------------------------------------------


def test_adjacent_registers_share_a_read_up_to_the_maps_limit(tmp_path: Path) -> None:
    names = ["voltage", "current", "active_power", "reactive_power", "apparent_power"]
    body = "".join(metric(name, address=2 * i) for i, name in enumerate(names))
    plan = ReadPlan(load_register_map(map_file(tmp_path, body)), names)
    assert plan.blocks == (ReadBlock("input", 0, 10),)

    limited = "[reads]\nmax_registers = 4\n" + body
    plan = ReadPlan(load_register_map(map_file(tmp_path, limited)), names)
    assert plan.blocks == (
        ReadBlock("input", 0, 4),
        ReadBlock("input", 4, 4),
        ReadBlock("input", 8, 2),
    )
    assert plan.metrics_in(plan.blocks[1]) == ["active_power", "reactive_power"]


def test_the_125_register_protocol_limit_holds_without_a_map_limit(tmp_path: Path) -> None:
    names = sorted(METRIC_UNITS)[:10]
    body = "[reads]\nmax_gap = 100\n" + "".join(
        metric(name, address=30 * i, data_type="float64") for i, name in enumerate(names)
    )
    plan = ReadPlan(load_register_map(map_file(tmp_path, body)), names)
    # Ten float64 values 30 registers apart: the gaps are bridged, but a read that would
    # pass 125 registers starts a new block.
    assert plan.blocks == (ReadBlock("input", 0, 124), ReadBlock("input", 150, 124))


def test_gaps_are_bridged_only_when_the_map_allows_and_types_never_mix(tmp_path: Path) -> None:
    body = (
        metric("voltage", address=0)
        + metric("current", address=5)
        + metric("frequency", address=2, register_type="holding")
    )
    plan = ReadPlan(
        load_register_map(map_file(tmp_path, body)), ["voltage", "current", "frequency"]
    )
    assert plan.blocks == (
        ReadBlock("holding", 2, 2),
        ReadBlock("input", 0, 2),
        ReadBlock("input", 5, 2),
    )
    bridged = "[reads]\nmax_gap = 3\n" + body
    plan = ReadPlan(load_register_map(map_file(tmp_path, bridged)), ["voltage", "current"])
    assert plan.blocks == (ReadBlock("input", 0, 7),)


def test_a_plan_for_a_metric_the_map_lacks_is_refused() -> None:
    with pytest.raises(MissingMetricsError, match="power_factor"):
        ReadPlan(load_register_map("schneider_iem3000"), ["active_power", "power_factor"])


# --- validation: every problem names its field -----------------------------------------


def test_defaults_fill_metrics_and_can_be_overridden(tmp_path: Path) -> None:
    body = """
    [defaults]
    register_type = "holding"
    data_type = "int32"
    word_order = "little"

    [metrics.active_power]
    address = 10
    unit = "kW"
    kind = "instantaneous"

    [metrics.voltage]
    address = 20
    data_type = "uint16"
    unit = "V"
    kind = "instantaneous"
    """
    register_map = load_register_map(map_file(tmp_path, body))
    power = register_map.metrics["active_power"]
    assert (power.register_type, power.data_type, power.word_order) == (
        "holding",
        "int32",
        "little",
    )
    assert register_map.metrics["voltage"].data_type == "uint16"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            metric("voltage") + "[metrics.watts]\naddress = 4\n",
            "metrics.watts: unknown metric 'watts'; known metrics: ",
        ),
        (
            metric("active_power", unit="kWh"),
            "metrics.active_power.unit: 'kWh' does not convert to 'W', the unit of "
            "active_power; use one of: W, kW, MW",
        ),
        (
            metric("active_energy_import", kind="instantaneous"),
            "metrics.active_energy_import.kind: active_energy_import is cumulative, "
            "not instantaneous",
        ),
        (
            metric("voltage", data_type="float16"),
            "metrics.voltage.data_type: must be 'int16', 'uint16', 'int32', 'uint32', "
            "'int64', 'uint64', 'float32' or 'float64'",
        ),
        (
            metric("voltage", register_type="coil"),
            "metrics.voltage.register_type: must be 'holding' or 'input'",
        ),
        (metric("voltage", address=-1), "metrics.voltage.address: must be greater than or equal"),
        (
            metric("voltage", address=65534, data_type="float64"),
            "metrics.voltage.address: a float64 needs 4 registers, so the address must be "
            "at most 65532",
        ),
        (metric("voltage", scale=0), "metrics.voltage.scale: must be a finite number other than 0"),
        (
            metric("voltage", valid_min=10, valid_max=5),
            "metrics.voltage.valid_min: must be at most valid_max (5.0)",
        ),
        (metric("voltage", word_order="middle"), "metrics.voltage.word_order: must be 'big'"),
        (metric("voltage", offset=3), "metrics.voltage.offset: unknown field"),
        ('[metrics.voltage]\naddress = 0\nunit = "V"\n', "metrics.voltage.register_type: required"),
        (
            "[defaults]\ndata_tpye = 'float32'\n" + metric("voltage"),
            "defaults.data_tpye: unknown field",
        ),
        ("", "metrics: required"),
        ("[reads]\nmax_registers = 200\n" + metric("voltage"), "reads.max_registers: must be less"),
    ],
)
def test_a_bad_map_names_the_field(tmp_path: Path, body: str, expected: str) -> None:
    problems = problems_of(tmp_path, body)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_overlapping_registers_are_rejected(tmp_path: Path) -> None:
    body = (
        metric("voltage", address=10)
        + metric("current", address=11)
        + metric("frequency", address=11, register_type="holding")
    )
    problems = problems_of(tmp_path, body)
    # Same registers of the same type clash; the holding register 11 is another table.
    assert problems == (
        "metrics.current.address: input registers 11-12 overlap those of voltage (10-11)",
    )


def test_a_scale_exponent_on_a_value_register_is_rejected(tmp_path: Path) -> None:
    body = (
        metric("voltage", address=10)
        + metric("current", address=20, data_type="int16")
        + '[metrics.current.scale_exponent]\naddress = 11\nregister_type = "input"\n'
    )
    problems = problems_of(tmp_path, body)
    assert problems == (
        "metrics.current.scale_exponent.address: input register 11 is a value register "
        "of voltage (10-11)",
    )


def test_every_problem_is_reported_at_once_with_the_file_name(tmp_path: Path) -> None:
    # Field checks first, then the rules that span fields (units, kinds, overlaps).
    body = metric("voltage", data_type="float8") + metric("current", kind="counter")
    with pytest.raises(RegisterMapError) as info:
        load_register_map(map_file(tmp_path, body))
    message = str(info.value)
    assert str(tmp_path / "meter.toml") in message
    assert "metrics.voltage.data_type" in message
    assert "metrics.current.kind" in message

    body = metric("voltage", unit="kW") + metric("current", unit="W", address=2)
    assert [problem.split(":")[0] for problem in problems_of(tmp_path, body)] == [
        "metrics.voltage.unit",
        "metrics.current.unit",
    ]


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (lambda p: p.write_text("[meter\n", encoding="utf-8"), "TOML syntax error"),
        (lambda p: p.write_bytes(b"\xff\xfe[meter]"), "not UTF-8 text"),
        (lambda p: None, "file not found"),
    ],
)
def test_unreadable_map_files_say_why(tmp_path: Path, write: object, expected: str) -> None:
    path = tmp_path / "meter.toml"
    assert callable(write)
    write(path)
    with pytest.raises(RegisterMapError) as info:
        load_register_map(path)
    assert info.value.problems[0].startswith(expected)


def test_map_files_must_be_toml(tmp_path: Path) -> None:
    with pytest.raises(RegisterMapError, match=r"\*\.toml"):
        load_register_map(tmp_path / "meter.json")


def test_an_unknown_builtin_name_lists_the_builtin_maps() -> None:
    with pytest.raises(RegisterMapError, match="eastron_sdm630, schneider_iem3000"):
        load_register_map("abb_b23")


# --- the gateway config checks the map at load time ------------------------------------

GATEWAY = """\
gateway_id = "gw-1"

[broker]
host = "127.0.0.1"

[buffer]
path = "buffer"

[[devices]]
device_id = "meter-1"
protocol = "modbus_tcp"
host = "10.0.0.5"
register_map = "{register_map}"
metrics = {metrics}
poll_interval_s = 1.0
timeout_s = 0.5
"""


def config_problems(tmp_path: Path, register_map: str, metrics: str) -> tuple[str, ...]:
    path = tmp_path / "gateway.toml"
    path.write_text(GATEWAY.format(register_map=register_map, metrics=metrics), encoding="utf-8")
    with pytest.raises(ConfigFileError) as info:
        load_config(path)
    return info.value.problems


def test_config_names_each_metric_the_map_does_not_provide(tmp_path: Path) -> None:
    problems = config_problems(
        tmp_path, "schneider_iem3000", '["active_power", "power_factor", "gas_volume"]'
    )
    assert problems == (
        "devices[0].metrics[1]: register map 'schneider_iem3000' has no 'power_factor'; it "
        "provides: current, voltage, active_power, reactive_power, apparent_power, frequency, "
        "active_energy_import",
        "devices[0].metrics[2]: register map 'schneider_iem3000' has no 'gas_volume'; it "
        "provides: current, voltage, active_power, reactive_power, apparent_power, frequency, "
        "active_energy_import",
    )


def test_config_rejects_an_unknown_builtin_map(tmp_path: Path) -> None:
    problems = config_problems(tmp_path, "eastron_sdm120", '["active_power"]')
    assert len(problems) == 1
    assert problems[0].startswith(
        "devices[0].register_map: invalid register map 'eastron_sdm120': no built-in register "
        "map of that name"
    )


def test_config_reports_a_broken_map_file_with_its_field(tmp_path: Path) -> None:
    map_file(tmp_path, metric("active_power", unit="kWh"), name="own.toml")
    problems = config_problems(tmp_path, "own.toml", '["active_power"]')
    assert len(problems) == 1
    assert problems[0].startswith(f"devices[0].register_map: invalid register map {tmp_path}")
    assert "metrics.active_power.unit: 'kWh' does not convert to 'W'" in problems[0]


def test_config_accepts_a_valid_own_map(tmp_path: Path) -> None:
    map_file(tmp_path, metric("active_power"), name="own.toml")
    path = tmp_path / "gateway.toml"
    path.write_text(
        GATEWAY.format(register_map="own.toml", metrics='["active_power"]'), encoding="utf-8"
    )
    (device,) = load_config(path).devices
    assert device.model_dump()["register_map"] == tmp_path / "own.toml"
