"""The fast path against the contract: it may decline a valid message (the slow path then
takes it), but it must never accept one the contract's pydantic models would not accept
whole, and it must accept the clean batches gateways actually send.

Payloads are assembled from JSON text fragments, so they can hold what ``json.dumps`` never
writes: duplicate keys, numbers out of range, odd timestamp spellings.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, given, settings

from schemas import METRIC_UNITS, DeadLetterReason, Reading, ReadingsRecord
from schemas.telemetry import IDENTIFIER_PATTERN
from services.ingest.fastpath import Window, clean_batch
from services.ingest.validation import ValidationPolicy, examine

NOW = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
POLICY = ValidationPolicy()
KNOWN = {"press-01", "a" * 64}
TOPIC = "cf/v1/telemetry/gw-1/press-01"

Fragment = str  # a piece of JSON text


def text(value: object) -> Fragment:
    return json.dumps(value)


def render_ts(moment: datetime, style: str, digits: int, offset: str) -> Fragment:
    """A timestamp in one of the spellings gateways and broken gateways produce."""
    local = moment.astimezone(OFFSET_ZONES.get(offset, UTC))
    base = local.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{local.microsecond:06d}{moment.microsecond % 1000:03d}"[:digits]
    dotted = f".{fraction}" if digits else ""
    match style:
        case "canonical":
            return text(local.isoformat())
        case "fraction":
            return text(f"{base}{dotted}{offset}")
        case "lower":
            return text(f"{base}{dotted}z".replace("T", "t"))
        case "space":
            return text(f"{base.replace('T', ' ')}{dotted}Z")
        case "no-seconds":
            return text(f"{base[:-3]}Z")
        case "comma":
            return text(f"{base},5Z")
        case "naive":
            return text(f"{base}{dotted}")
        case "unix":
            return str(int(local.timestamp()))
        case "leap":
            return text(f"{base[:-2]}60Z")
        case _:
            return text("yesterday")


VALID_STYLES = ["canonical", "fraction", "lower", "space"]
ODD_STYLES = ["no-seconds", "comma", "naive", "unix", "leap", "garbage"]
OFFSET_ZONES = {
    "+08:00": timezone(timedelta(hours=8)),
    "+0800": timezone(timedelta(hours=8)),
    "-05:30": timezone(-timedelta(hours=5, minutes=30)),
    "+23:59": timezone(timedelta(hours=23, minutes=59)),
}
VALID_OFFSETS = ["Z", "+00:00", "-00:00", *OFFSET_ZONES]
ODD_OFFSETS = ["+24:00", "+08", "+8:00"]


ONE_IN_EIGHT = st.sampled_from([False] * 7 + [True])


def mostly(
    valid: st.SearchStrategy[Fragment], odd: st.SearchStrategy[Fragment]
) -> st.SearchStrategy[Fragment]:
    """Valid seven times in eight, so that whole payloads are often clean."""
    return ONE_IN_EIGHT.flatmap(lambda is_odd: odd if is_odd else valid)


def timestamps(*, clean: bool = False) -> st.SearchStrategy[Fragment]:
    inside = st.datetimes(
        min_value=(NOW - POLICY.max_age + timedelta(seconds=1)).replace(tzinfo=None),
        max_value=(NOW + POLICY.max_future - timedelta(seconds=1)).replace(tzinfo=None),
        timezones=st.just(UTC),
    )
    if clean:
        return st.builds(render_ts, inside, st.just("canonical"), st.just(6), st.just("Z"))
    edges = st.sampled_from(
        [
            NOW + POLICY.max_future,
            NOW + POLICY.max_future + timedelta(microseconds=1),
            NOW - POLICY.max_age,
            NOW - POLICY.max_age - timedelta(microseconds=1),
            NOW - timedelta(days=40),
            NOW + timedelta(hours=1),
        ]
    )
    digits = st.integers(0, 9)
    valid = st.builds(
        render_ts, inside, st.sampled_from(VALID_STYLES), digits, st.sampled_from(VALID_OFFSETS)
    )
    odd = st.one_of(
        st.builds(render_ts, edges, st.sampled_from(VALID_STYLES), digits, st.just("Z")),
        st.builds(render_ts, inside, st.just("fraction"), digits, st.sampled_from(ODD_OFFSETS)),
        st.builds(render_ts, inside, st.sampled_from(ODD_STYLES), digits, st.just("Z")),
    )
    return mostly(valid, odd)


def values(*, clean: bool = False) -> st.SearchStrategy[Fragment]:
    finite = st.floats(allow_nan=False, allow_infinity=False).map(text)
    if clean:
        return finite
    valid = st.one_of(
        finite,
        st.integers(-(10**15), 10**15).map(str),
        st.sampled_from(["-0.0", "1E2", "1e-400", "1.7976931348623157e308"]),
    )
    odd = st.one_of(
        st.sampled_from(["1e999", "-1e999", '"1.5"', "true", "null", "1" + "0" * 400]),
        st.integers(10**30, 10**40).map(str),
    )
    return mostly(valid, odd)


def identifiers(*, clean: bool = False) -> st.SearchStrategy[Fragment]:
    good = st.from_regex(IDENTIFIER_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 64)
    if clean:
        return good.filter(lambda s: "\n" not in s).map(text)
    odd = st.sampled_from(["", "a" * 64, "a" * 65, "dev\n", "-dev", "dév", "a b", "x.y_z-1", 7])
    return mostly(good.map(text), odd.map(text))


@st.composite
def readings(draw: st.DrawFn, *, clean: bool = False) -> Fragment:
    metric = draw(st.sampled_from(sorted(METRIC_UNITS)))
    fields: list[tuple[str, Fragment]] = [
        ("ts", draw(timestamps(clean=clean))),
        ("metric", text(metric)),
        ("value", draw(values(clean=clean))),
        ("unit", text(METRIC_UNITS[metric])),
    ]
    quality = draw(st.sampled_from([None, "good", "uncertain", "bad"]))
    if quality is not None:
        fields.append(("quality", text(quality)))
    if not clean and draw(ONE_IN_EIGHT):
        fields = draw(mutated(fields, READING_ODDITIES))
    return obj(fields)


READING_ODDITIES: dict[str, list[Fragment]] = {
    "metric": [text("mood"), text("Active_Power"), text(""), "1"],
    "unit": [text("kW"), text(""), text("W" * 17), "null"],
    "quality": [text("GOOD"), "null", "1", text("")],
    "extra": ["1"],
}

BATCH_ODDITIES: dict[str, list[Fragment]] = {
    "seq": ["-1", "1.0", text("3"), "true", str(2**64), str(2**63 - 1)],
    "schema_version": ["1", "2", "1.0", text("1"), "true"],
    "readings": ["[]", "{}", "null", text("x")],
    "received_at": [text(NOW.isoformat())],
    "device_id": [text("other"), text("a" * 64)],
}


@st.composite
def mutated(
    draw: st.DrawFn, fields: list[tuple[str, Fragment]], oddities: dict[str, list[Fragment]]
) -> list[tuple[str, Fragment]]:
    """Fields with some of them dropped, replaced, or repeated (a duplicate key)."""
    result = list(fields)
    for _ in range(draw(st.integers(1, 2))):
        action = draw(st.sampled_from(["drop", "replace", "duplicate"]))
        if action == "drop" and result:
            result.pop(draw(st.integers(0, len(result) - 1)))
        elif action == "replace":
            name = draw(st.sampled_from(sorted(oddities)))
            result = [(k, v) for k, v in result if k != name]
            result.append((name, draw(st.sampled_from(oddities[name]))))
        elif action == "duplicate" and result:
            name, _ = result[draw(st.integers(0, len(result) - 1))]
            odd = oddities.get(name) or [text("x")]
            result.insert(0, (name, draw(st.sampled_from(odd))))
    return result


def obj(fields: list[tuple[str, Fragment]]) -> Fragment:
    return "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in fields) + "}"


@st.composite
def payloads(draw: st.DrawFn, *, clean: bool = False) -> bytes:
    fields: list[tuple[str, Fragment]] = [
        ("gateway_id", draw(identifiers(clean=clean))),
        ("device_id", text("press-01")),
        ("session_id", draw(identifiers(clean=clean))),
        ("seq", str(draw(st.integers(0, 2**40)))),
        ("sent_at", draw(timestamps(clean=clean))),
    ]
    size = draw(st.integers(1, 3))
    fields.append(
        ("readings", "[" + ", ".join(draw(readings(clean=clean)) for _ in range(size)) + "]")
    )
    if draw(st.booleans()):
        fields.insert(0, ("schema_version", "1"))
    if not clean and draw(ONE_IN_EIGHT):
        fields = draw(mutated(fields, BATCH_ODDITIES))
    return obj(fields).encode()


def fast(payload: bytes, topic_device: str | None = "press-01") -> object:
    window = Window.around(NOW, max_age=POLICY.max_age, max_future=POLICY.max_future)
    return clean_batch(payload, window=window, known_devices=KNOWN, topic_device_id=topic_device)


def slow(payload: bytes, topic_device: str | None = "press-01"):  # type: ignore[no-untyped-def]
    return examine(
        TOPIC,
        payload,
        received_at=NOW,
        known_devices=KNOWN,
        topic_device_id=topic_device,
        policy=POLICY,
    )


PROPERTY = settings(
    max_examples=600, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY
@given(payloads(), st.sampled_from(["press-01", None]))
def test_fast_path_accepts_only_what_the_contract_accepts_whole(
    payload: bytes, topic_device: str | None
) -> None:
    accepted = fast(payload, topic_device)
    event("fast path: accepted" if accepted is not None else "fast path: declined")
    if accepted is None:
        return
    judged = slow(payload, topic_device)
    assert judged.rejects == [], payload
    assert judged.accepted is not None
    # The same record reaches the stream, and the header says what the record says.
    record = ReadingsRecord.model_validate_json(accepted.value)  # type: ignore[attr-defined]
    assert record == ReadingsRecord.model_validate_json(judged.accepted.value)
    header = (record.gateway_id, record.device_id, record.session_id, record.seq, record.sent_at)
    assert header == (
        accepted.gateway_id,  # type: ignore[attr-defined]
        accepted.device_id,  # type: ignore[attr-defined]
        accepted.session_id,  # type: ignore[attr-defined]
        accepted.seq,  # type: ignore[attr-defined]
        accepted.sent_at,  # type: ignore[attr-defined]
    )
    assert accepted.reading_count == len(record.readings)  # type: ignore[attr-defined]


@PROPERTY
@given(payloads(clean=True))
def test_fast_path_takes_the_clean_batches_gateways_send(payload: bytes) -> None:
    judged = slow(payload)
    assert judged.rejects == []
    assert judged.accepted is not None
    assert fast(payload) is not None, payload


def test_generated_payloads_reach_both_verdicts() -> None:
    """The generator is worth something only if it makes the fast path say yes and no."""
    verdicts: set[bool] = set()

    @settings(max_examples=100, derandomize=True, database=None)
    @given(payloads())
    def collect(payload: bytes) -> None:
        verdicts.add(fast(payload) is not None)

    collect()
    assert verdicts == {True, False}


def test_known_metrics_satisfy_the_reading_contract() -> None:
    """The fast path looks metric and unit up instead of matching their patterns: that is
    only as strict if every known metric and unit passes them."""
    for metric, unit in METRIC_UNITS.items():
        Reading(ts=NOW, metric=metric, value=0.0, unit=unit)


def test_a_timestamp_rounded_into_the_window_is_left_to_the_slow_path() -> None:
    """Seven fraction digits: pydantic truncates this ts to a microsecond too old, msgspec
    rounds it onto the window's bound."""
    too_old = NOW - POLICY.max_age - timedelta(microseconds=1)
    ts = text(too_old.strftime("%Y-%m-%dT%H:%M:%S.%f") + "9Z")
    reading = obj(
        [("ts", ts), ("metric", text("voltage")), ("value", "230.0"), ("unit", text("V"))]
    )
    payload = obj(
        [
            ("gateway_id", text("gw-1")),
            ("device_id", text("press-01")),
            ("session_id", text("s1")),
            ("seq", "1"),
            ("sent_at", text(NOW.isoformat())),
            ("readings", f"[{reading}]"),
        ]
    ).encode()
    assert [r.reason for r in slow(payload).rejects] == [DeadLetterReason.TIMESTAMP_TOO_OLD]
    assert fast(payload) is None
