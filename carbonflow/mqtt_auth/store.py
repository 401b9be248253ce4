"""The registry side of MQTT identities: the ``mqtt_credentials`` table (migration 0003).

Passwords exist only in the caller's hands: ``issue`` returns one once, and the table keeps
its Mosquitto hash.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from pydantic import SecretStr

from carbonflow.errors import CredentialError
from carbonflow.mqtt_auth.access import Identity, RegistrySnapshot, Role, check_username
from carbonflow.mqtt_auth.passwords import hash_password, new_password

logger = logging.getLogger(__name__)

_UPSERT = """
INSERT INTO mqtt_credentials (username, role, password_hash) VALUES (%s, %s, %s)
ON CONFLICT (username) DO UPDATE SET
    password_hash = EXCLUDED.password_hash, issued_at = now(), revoked_at = NULL
"""

_LIST = """
SELECT c.username, c.role, c.issued_at, c.revoked_at,
       (SELECT count(*) FROM devices d WHERE d.gateway_id = c.username)
FROM mqtt_credentials c ORDER BY c.username
"""


@dataclass(frozen=True)
class CredentialRecord:
    username: str
    role: Role
    issued_at: datetime
    revoked_at: datetime | None
    devices: int

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def issue(conn: psycopg.Connection[Any], username: str, role: Role) -> SecretStr:
    """Issue credentials for ``username`` (replacing any earlier password); return the password.

    A username keeps its role: re-issuing a gateway's credentials as a service is refused.
    """
    check_username(username, role)
    password = new_password()
    hashed = hash_password(username, password)
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "SELECT role FROM mqtt_credentials WHERE username = %s FOR UPDATE", (username,)
            )
            row = cur.fetchone()
            if row is not None and row[0] != role.value:
                raise CredentialError(f"{username} is a {row[0]} identity, not a {role.value}")
            cur.execute(_UPSERT, (username, role.value, hashed))
    except psycopg.errors.UndefinedTable as exc:
        raise CredentialError(
            "the database lacks mqtt_credentials: run `carbonflow db migrate`"
        ) from exc
    logger.info("issued MQTT credentials for %s %s", role.value, username)
    return password


def revoke(conn: psycopg.Connection[Any], username: str) -> bool:
    """Revoke ``username``'s credentials; False if it had none active."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(
            "UPDATE mqtt_credentials SET revoked_at = now()"
            " WHERE username = %s AND revoked_at IS NULL",
            (username,),
        )
        revoked = cur.rowcount == 1
    if revoked:
        logger.info("revoked MQTT credentials of %s", username)
    return revoked


def active_role(conn: psycopg.Connection[Any], username: str) -> Role | None:
    """The role of ``username``'s active credentials, or None when it has none."""
    row = conn.execute(
        "SELECT role FROM mqtt_credentials WHERE username = %s AND revoked_at IS NULL",
        (username,),
    ).fetchone()
    return Role(row[0]) if row is not None else None


def list_credentials(conn: psycopg.Connection[Any]) -> list[CredentialRecord]:
    rows = conn.execute(_LIST).fetchall()
    return [
        CredentialRecord(username, Role(role), issued_at, revoked_at, int(devices))
        for username, role, issued_at, revoked_at, devices in rows
    ]


def has_credentials_table(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('mqtt_credentials') IS NOT NULL").fetchone()
    return bool(row and row[0])


def snapshot(conn: psycopg.Connection[Any], source: str) -> RegistrySnapshot:
    """The active identities and each gateway's devices, read in one transaction."""
    with conn.transaction():
        identities = tuple(
            Identity(username, Role(role), password_hash, issued_at)
            for username, role, password_hash, issued_at in conn.execute(
                "SELECT username, role, password_hash, issued_at FROM mqtt_credentials"
                " WHERE revoked_at IS NULL ORDER BY username"
            ).fetchall()
        )
        gateways = [i.username for i in identities if i.role is Role.GATEWAY]
        devices: dict[str, list[str]] = {}
        for gateway_id, device_id in conn.execute(
            "SELECT gateway_id, device_id FROM devices WHERE gateway_id = ANY(%s)"
            " ORDER BY gateway_id, device_id",
            (gateways,),
        ).fetchall():
            devices.setdefault(gateway_id, []).append(device_id)
    return RegistrySnapshot(source, identities, {k: tuple(v) for k, v in devices.items()})
