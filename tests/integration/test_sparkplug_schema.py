"""Our Sparkplug B schema is the same wire contract as Eclipse Tahu's reference schema.

services/ingest/sparkplug/sparkplug_b.proto is written from the specification; this compares
its compiled descriptor, field by field, with the descriptor in Tahu's release on Maven
Central, and checks that payloads cross between the two in both directions.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2

from services.ingest.sparkplug import sparkplug_b_pb2 as pb
from tests.sparkplug_node import DataType, EdgeNode, Payload, metric
from tests.tahu_reference import reference_file_descriptor


def _ours() -> descriptor_pb2.FileDescriptorProto:
    ours = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(ours)
    return ours


def test_messages_enums_and_field_numbers_match_tahu() -> None:
    reference = reference_file_descriptor()
    ours = _ours()
    # Comments and source positions are not part of the contract.
    reference.ClearField("source_code_info")
    ours.ClearField("source_code_info")

    assert ours.package == reference.package
    assert [m.name for m in ours.message_type] == [m.name for m in reference.message_type]
    assert ours.enum_type == reference.enum_type
    assert ours.message_type == reference.message_type


def test_a_tahu_encoded_birth_decodes_with_our_code_and_back() -> None:
    node = EdgeNode("plant", "gw-1", bd_seq=3)
    sent = node.nbirth(
        1_764_400_000_000,
        [
            metric(
                name="Meter/Active Power",
                alias=5,
                datatype=DataType.Double,
                value=1234.5,
                properties={"engUnit": "kW"},
            ),
            metric(name="Energy", alias=6, datatype=DataType.UInt64, value=2**40),
        ],
    )

    decoded = pb.Payload.FromString(sent)

    assert decoded.seq == 0
    assert [(m.name, m.alias) for m in decoded.metrics] == [
        ("bdSeq", 0),
        ("Node Control/Rebirth", 0),
        ("Meter/Active Power", 5),
        ("Energy", 6),
    ]
    assert decoded.metrics[0].long_value == 3
    assert decoded.metrics[2].double_value == 1234.5
    assert decoded.metrics[2].properties.values[0].string_value == "kW"
    assert decoded.metrics[3].long_value == 2**40
    # And what our code writes, Tahu's schema reads identically.
    assert Payload.FromString(decoded.SerializeToString()).SerializeToString() == sent
