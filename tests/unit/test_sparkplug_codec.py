"""Sparkplug B payload codec: decoding with the generated protobuf code, numbers by datatype."""

from __future__ import annotations

import base64
import json

import pytest

from services.ingest.sparkplug import sparkplug_b_pb2 as pb
from services.ingest.sparkplug.codec import (
    REBIRTH_METRIC,
    DatatypeMismatchError,
    MalformedPayloadError,
    decode_payload,
    number,
    rebirth_request,
    render_payload,
)
from services.ingest.sparkplug.codegen import stale_files
from tests.sparkplug_node import metric, payload


def test_generated_protobuf_code_is_what_the_proto_produces() -> None:
    assert stale_files() == [], "run `python -m services.ingest.sparkplug.codegen` and commit"


def test_decoding_keeps_what_was_sent() -> None:
    data = payload(
        [
            metric(name="Active Power", alias=4, datatype=pb.Float, value=1.5, ts_ms=123),
            metric(alias=5, is_null=True),
            metric(name="kWh", datatype=pb.Double, value=2.0, properties={"engUnit": "kWh"}),
        ],
        ts_ms=1000,
        seq=17,
    )
    decoded = decode_payload(data)
    assert (decoded.timestamp_ms, decoded.seq) == (1000, 17)
    power, null, energy = decoded.metrics
    assert (power.name, power.alias, power.datatype, power.timestamp_ms) == (
        "Active Power",
        4,
        pb.Float,
        123,
    )
    assert (power.value_kind, power.value) == ("float_value", 1.5)
    assert (null.index, null.name, null.is_null, null.value) == (1, None, True, None)
    assert energy.properties == {"engUnit": "kWh"}


def test_missing_optional_fields_decode_as_none() -> None:
    decoded = decode_payload(payload([metric(alias=1)], ts_ms=None, seq=None))
    assert (decoded.timestamp_ms, decoded.seq) == (None, None)
    assert decoded.metrics[0].datatype is None


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b'{"not": "protobuf"}', b"\x0a\x05ab"])
def test_malformed_bytes_raise(garbage: bytes) -> None:
    with pytest.raises(MalformedPayloadError):
        decode_payload(garbage)


@pytest.mark.parametrize(
    ("datatype", "kind", "raw", "expected"),
    [
        (pb.Int8, "int_value", 255, -1.0),  # own-width two's complement
        (pb.Int8, "int_value", 4294967295, -1.0),  # 32-bit two's complement
        (pb.Int8, "int_value", 127, 127.0),
        (pb.Int16, "int_value", 65535 - 99, -100.0),
        (pb.Int32, "int_value", 2**32 - 5, -5.0),
        (pb.Int64, "long_value", 2**64 - 7, -7.0),
        (pb.UInt32, "int_value", 2**32 - 1, float(2**32 - 1)),
        (pb.UInt64, "long_value", 10, 10.0),
        (pb.Int32, "long_value", 42, 42.0),
        (pb.Float, "float_value", 1.25, 1.25),
        (pb.Double, "double_value", -3.5, -3.5),
    ],
)
def test_numbers_by_datatype(datatype: int, kind: str, raw: object, expected: float) -> None:
    assert number(kind, raw, datatype) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("datatype", "kind", "raw"),
    [
        (pb.Double, "string_value", "1.5"),
        (pb.Int32, "double_value", 1.5),
        (pb.UInt8, "int_value", 300),
        (pb.Boolean, "boolean_value", True),
        (pb.String, "string_value", "x"),
        (pb.Double, None, None),
    ],
)
def test_non_numbers_and_wrong_carriers_are_a_mismatch(
    datatype: int, kind: str | None, raw: object
) -> None:
    with pytest.raises(DatatypeMismatchError):
        number(kind, raw, datatype)  # type: ignore[arg-type]


def test_rebirth_request_is_a_node_control_rebirth_true() -> None:
    message = pb.Payload()
    message.ParseFromString(rebirth_request(1_700_000_000_000))
    assert message.timestamp == 1_700_000_000_000
    [m] = message.metrics
    assert (m.name, m.datatype, m.boolean_value) == (REBIRTH_METRIC, pb.Boolean, True)


def test_render_payload_gives_json_or_base64() -> None:
    data = payload([metric(name="a", datatype=pb.Double, value=1.0)], ts_ms=5, seq=1)
    rendered = json.loads(render_payload(data))
    assert rendered["metrics"][0]["name"] == "a"
    assert base64.b64decode(render_payload(b"\xff\xff\xff")) == b"\xff\xff\xff"
