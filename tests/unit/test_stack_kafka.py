"""Kafka cluster ids: the storage tool must be able to read every one we generate."""

from __future__ import annotations

import base64
import random
import uuid

import pytest

from carbonflow.stack import kafka


def test_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    # One uuid in 64 encodes to a leading '-'; feed two of those before a good one.
    dashed = uuid.UUID(bytes=bytes([0xF8]) + rng.randbytes(15))
    plain = uuid.UUID(bytes=bytes([0x00]) + rng.randbytes(15))
    assert base64.urlsafe_b64encode(dashed.bytes).startswith(b"-")
    supply = iter([dashed, dashed, plain])
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: next(supply))
    cluster_id = kafka.new_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(cluster_id) == 22
