"""What the broker's password file and ACL say, from registry snapshots (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from carbonflow.errors import CredentialError
from carbonflow.mqtt_auth.access import (
    BrokerAccess,
    Identity,
    RegistrySnapshot,
    Role,
    acl_file,
    check_username,
    merge,
    password_file,
    root_pattern,
)

T0 = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
HASH_A = "$7$101$saltA$hashA=="
HASH_B = "$7$101$saltB$hashB=="


def identity(
    username: str, role: Role = Role.GATEWAY, at: datetime = T0, h: str = HASH_A
) -> Identity:
    return Identity(username, role, h, at)


def user_blocks(text: str) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("user "):
            current = blocks.setdefault(line.removeprefix("user "), [])
        elif line and not line.startswith("#"):
            assert current is not None, f"rule outside a user block: {line}"
            current.append(line)
    return blocks


def test_a_gateway_may_write_only_its_own_devices_status_and_sparkplug_node() -> None:
    access = merge([RegistrySnapshot("db", (identity("gw-1"),), {"gw-1": ("m-2", "m-1")})])

    rules = user_blocks(acl_file(access, "cf/v1"))

    assert rules == {
        "gw-1": [
            "topic write +/+/telemetry/gw-1/m-1",
            "topic write +/+/telemetry/gw-1/m-2",
            "topic write +/+/status/gateway/gw-1",
            "topic write +/+/status/device/gw-1/+",
            "topic write spBv1.0/+/+/gw-1",
            "topic write spBv1.0/+/+/gw-1/+",
            "topic read spBv1.0/+/NCMD/gw-1",
            "topic read spBv1.0/+/DCMD/gw-1/+",
            "topic read spBv1.0/STATE/+",
        ]
    }


def test_a_service_reads_edge_traffic_and_writes_only_its_status_and_commands() -> None:
    access = merge([RegistrySnapshot("db", (identity("ingest", Role.SERVICE),))])

    rules = user_blocks(acl_file(access, "plant/cf/v1"))["ingest"]

    writes = [r for r in rules if r.startswith("topic write")]
    assert writes == [
        "topic write +/+/+/status/ingest/+",
        "topic write spBv1.0/+/NCMD/+",
        "topic write spBv1.0/STATE/+",
    ]
    assert "topic read +/+/+/telemetry/+/+" in rules
    assert "topic read spBv1.0/#" in rules


def test_the_topic_root_is_matched_level_by_level() -> None:
    assert root_pattern("cf/v1") == "+/+"
    assert root_pattern("acme/plant-3/cf/v1") == "+/+/+/+"


def test_a_gateway_without_devices_gets_no_telemetry_rule() -> None:
    access = merge([RegistrySnapshot("db", (identity("gw-1"),), {})])

    rules = user_blocks(acl_file(access, "cf/v1"))["gw-1"]

    assert not any("/telemetry/" in rule for rule in rules)


def test_unsafe_names_and_hashes_are_left_out_and_reported() -> None:
    snapshot = RegistrySnapshot(
        "db",
        (
            identity("gw-1"),
            identity("gw/#"),
            identity("gw 2"),
            identity("gw-3", h="plain-text"),
            identity("gw-4", h="$7$101$salt$hash\ninjected"),
        ),
        {"gw-1": ("m-1", "m/+", "m-2\nuser ingest")},
    )

    access = merge([snapshot])
    text = acl_file(access, "cf/v1")

    assert [i.username for i in access.identities] == ["gw-1"]
    assert set(user_blocks(text)) == {"gw-1"}
    assert "m/+" not in text
    assert "injected" not in password_file(access)
    assert [r for r in user_blocks(text)["gw-1"] if "/telemetry/" in r] == [
        "topic write +/+/telemetry/gw-1/m-1"
    ]
    assert len(access.problems) == 6


def test_a_username_in_two_registries_comes_from_the_primary_one_or_the_newest() -> None:
    old = RegistrySnapshot("main", (identity("gw-1", at=T0, h=HASH_A),), {"gw-1": ("m-1",)})
    new = RegistrySnapshot(
        "test", (identity("gw-1", at=T0 + timedelta(hours=1), h=HASH_B),), {"gw-1": ("m-9",)}
    )

    newest = merge([old, new])
    primary = merge([new, old], primary="main")

    assert newest.identities[0].password_hash == HASH_B
    assert newest.devices_by_gateway == {"gw-1": ("m-9",)}
    assert primary.identities[0].password_hash == HASH_A
    assert primary.devices_by_gateway == {"gw-1": ("m-1",)}
    assert all("active in" in p for p in newest.problems + primary.problems)


def test_the_password_file_has_one_line_per_identity_and_extras() -> None:
    access = merge([RegistrySnapshot("db", (identity("gw-2", h=HASH_B), identity("gw-1")))])

    text = password_file(access, {"_probe": "$7$101$p$q=="})

    assert text == f"gw-1:{HASH_A}\ngw-2:{HASH_B}\n_probe:$7$101$p$q==\n"


def test_an_empty_registry_lets_nobody_do_anything() -> None:
    text = acl_file(BrokerAccess((), {}), "cf/v1")

    assert user_blocks(text) == {}
    assert all(line.startswith("#") for line in text.splitlines())


@pytest.mark.parametrize(
    ("username", "role", "message"),
    [
        ("ingest", Role.GATEWAY, "reserved for a platform service"),
        ("gw-1", Role.SERVICE, "unknown platform service"),
        ("gw:1", Role.GATEWAY, "invalid MQTT username"),
        ("gw/+", Role.GATEWAY, "invalid MQTT username"),
        ("x" * 65, Role.GATEWAY, "invalid MQTT username"),
    ],
)
def test_usernames_are_checked_against_their_role(username: str, role: Role, message: str) -> None:
    with pytest.raises(CredentialError, match=message):
        check_username(username, role)


def test_valid_usernames_pass() -> None:
    check_username("plant1-hall-a.gw_01", Role.GATEWAY)
    check_username("ingest", Role.SERVICE)
