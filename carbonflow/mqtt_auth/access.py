"""MQTT identities and what each may do: the broker's password file and ACL, as text.

Pure: no I/O. Two roles:

- ``gateway``: an edge client; its username is the gateway id. It may publish telemetry only
  for the meters registered under it in ``devices``, its own gateway status and the status
  of its meters, and Sparkplug B as the edge node of the same id (reading only the commands
  addressed to that node).
- ``service``: a platform service such as ingest. It reads telemetry, status and Sparkplug
  B (also through shared subscriptions: Mosquitto checks read access per delivered message
  against the message's topic), and writes its own service status and Sparkplug commands
  (rebirth requests) and host-application state.

A topic root is matched level by level (``cf/v1`` becomes ``+/+``), so one broker serves
several roots of the same depth, e.g. a deployment's and a test run's; the gateway and
device levels, which carry the identity, are always literal.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final

from carbonflow.errors import CredentialError

#: Usernames and device ids that may appear in the ACL: no MQTT wildcards, separators,
#: spaces or ':' (the password file's separator). Same as the registry's ids.
IDENTIFIER_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: Mosquitto's password-file hashes: ``$6$`` (sha512) or ``$7$`` (sha512-pbkdf2).
PASSWORD_HASH_RE: Final = re.compile(r"^\$[67]\$[A-Za-z0-9+/=$]+$")
SPARKPLUG_NAMESPACE: Final = "spBv1.0"
#: Usernames of the platform services; no gateway may take one.
SERVICE_USERNAMES: Final = frozenset({"ingest"})


class Role(StrEnum):
    GATEWAY = "gateway"
    SERVICE = "service"


@dataclass(frozen=True)
class Identity:
    """One active MQTT identity (never the password, only its hash)."""

    username: str
    role: Role
    password_hash: str
    issued_at: datetime


@dataclass(frozen=True)
class RegistrySnapshot:
    """The active identities of one registry and the devices registered under each gateway."""

    source: str
    identities: tuple[Identity, ...]
    devices_by_gateway: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class BrokerAccess:
    """What the broker enforces: identities, each gateway's devices, and what was skipped."""

    identities: tuple[Identity, ...]
    devices_by_gateway: Mapping[str, tuple[str, ...]]
    problems: tuple[str, ...] = ()


def is_identifier(value: str) -> bool:
    return IDENTIFIER_RE.fullmatch(value) is not None


def check_username(username: str, role: Role) -> None:
    """Refuse a username that cannot be written into the broker's files or takes another
    role's name: services have fixed names, and gateways may not use them."""
    if not is_identifier(username):
        raise CredentialError(
            f"invalid MQTT username {username!r}: letters, digits, '_', '.', '-' (at most 64),"
            " starting with a letter or digit"
        )
    if role is Role.GATEWAY and username in SERVICE_USERNAMES:
        raise CredentialError(f"{username} is reserved for a platform service")
    if role is Role.SERVICE and username not in SERVICE_USERNAMES:
        raise CredentialError(
            f"unknown platform service {username!r}; known: {', '.join(sorted(SERVICE_USERNAMES))}"
        )


def merge(snapshots: Iterable[RegistrySnapshot], primary: str | None = None) -> BrokerAccess:
    """One broker's access from several registries (one per database on a shared broker).

    A username active in more than one registry is taken from the ``primary`` registry if
    it is one of them, else from the registry that issued it last, with its devices from
    there too, and reported as a problem; so is anything that could not be written safely
    into the files (which is then left out).
    """
    chosen: dict[str, tuple[Identity, RegistrySnapshot]] = {}
    problems: list[str] = []
    for snapshot in snapshots:
        for identity in snapshot.identities:
            if not is_identifier(identity.username):
                problems.append(
                    f"{snapshot.source}: skipped invalid username {identity.username!r}"
                )
                continue
            if PASSWORD_HASH_RE.fullmatch(identity.password_hash) is None:
                problems.append(
                    f"{snapshot.source}: skipped {identity.username}: bad password hash"
                )
                continue
            earlier = chosen.get(identity.username)
            if earlier is None or _preferred((identity, snapshot), earlier, primary):
                chosen[identity.username] = (identity, snapshot)
            if earlier is not None:
                problems.append(
                    f"{identity.username} is active in {earlier[1].source} and {snapshot.source};"
                    f" using {chosen[identity.username][1].source}'s"
                )
    devices: dict[str, tuple[str, ...]] = {}
    for username, (identity, snapshot) in chosen.items():
        if identity.role is not Role.GATEWAY:
            continue
        wanted = snapshot.devices_by_gateway.get(username, ())
        valid = tuple(sorted(d for d in wanted if is_identifier(d)))
        problems.extend(
            f"{snapshot.source}: skipped invalid device id {d!r} of {username}"
            for d in wanted
            if not is_identifier(d)
        )
        devices[username] = valid
    identities = tuple(identity for _, (identity, _) in sorted(chosen.items()))
    return BrokerAccess(identities, devices, tuple(problems))


def _preferred(
    candidate: tuple[Identity, RegistrySnapshot],
    incumbent: tuple[Identity, RegistrySnapshot],
    primary: str | None,
) -> bool:
    if (candidate[1].source == primary) != (incumbent[1].source == primary):
        return candidate[1].source == primary
    return candidate[0].issued_at > incumbent[0].issued_at


def root_pattern(topic_root: str) -> str:
    """``cf/v1`` -> ``+/+``: a root of the same depth, matched level by level."""
    return "/".join("+" for _ in topic_root.split("/"))


def gateway_rules(gateway_id: str, devices: Sequence[str], topic_root: str) -> list[str]:
    root, sp = root_pattern(topic_root), SPARKPLUG_NAMESPACE
    return [
        *(f"topic write {root}/telemetry/{gateway_id}/{device}" for device in devices),
        f"topic write {root}/status/gateway/{gateway_id}",
        f"topic write {root}/status/device/{gateway_id}/+",
        f"topic write {sp}/+/+/{gateway_id}",
        f"topic write {sp}/+/+/{gateway_id}/+",
        f"topic read {sp}/+/NCMD/{gateway_id}",
        f"topic read {sp}/+/DCMD/{gateway_id}/+",
        f"topic read {sp}/STATE/+",
    ]


def service_rules(service: str, topic_root: str) -> list[str]:
    root, sp = root_pattern(topic_root), SPARKPLUG_NAMESPACE
    return [
        f"topic read {root}/telemetry/+/+",
        f"topic read {root}/status/#",
        f"topic read {sp}/#",
        f"topic write {root}/status/{service}/+",
        f"topic write {sp}/+/NCMD/+",
        f"topic write {sp}/STATE/+",
    ]


def acl_file(access: BrokerAccess, topic_root: str) -> str:
    """Mosquitto ``acl_file`` text; anyone not listed may do nothing."""
    lines = [
        "# Generated by CarbonFlow from the registry (mqtt_credentials, devices); do not edit.",
        f"# Topic roots of the form {root_pattern(topic_root)} (like {topic_root}).",
    ]
    for identity in access.identities:
        if identity.role is Role.GATEWAY:
            devices = access.devices_by_gateway.get(identity.username, ())
            rules = gateway_rules(identity.username, devices, topic_root)
        else:
            rules = service_rules(identity.username, topic_root)
        lines += ["", f"user {identity.username}", *rules]
    return "\n".join(lines) + "\n"


def password_file(access: BrokerAccess, extra: Mapping[str, str] | None = None) -> str:
    """Mosquitto ``password_file`` text (``username:hash`` lines); ``extra``: more of them."""
    entries = [(identity.username, identity.password_hash) for identity in access.identities]
    entries += sorted((extra or {}).items())
    return "".join(f"{username}:{password_hash}\n" for username, password_hash in entries)
