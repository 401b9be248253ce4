"""``carbonflow device add`` and ``carbonflow mqtt issue|revoke|list|sync``.

Each command changes the registry (``CARBONFLOW_DB_*``), then applies it to the local
stack's broker: password file and ACL regenerated, Mosquitto reloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings
from carbonflow.errors import CarbonFlowError

if TYPE_CHECKING:
    import psycopg
    from pydantic import SecretStr

mqtt_app = typer.Typer(help="MQTT identities: issue, revoke, list, apply.", no_args_is_help=True)
device_app = typer.Typer(help="Devices (meters) in the registry.", no_args_is_help=True)

PasswordFile = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        help="Write the credentials here (0600, as CARBONFLOW_MQTT_* lines) instead of printing",
        dir_okay=False,
    ),
]


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


def _connect() -> psycopg.Connection[Any]:
    # Imported here: mounting these commands costs nothing on installs without psycopg.
    import psycopg

    database = DatabaseSettings()
    try:
        return psycopg.connect(database.conninfo(), autocommit=True)
    except psycopg.OperationalError as exc:
        raise _fail(f"cannot connect to database {database.name}: {exc}") from exc


def _hand_over(username: str, password: SecretStr, password_file: Path | None) -> None:
    """Show the new password once, or write it to a private file."""
    from carbonflow.files import write_private

    lines = (
        f"CARBONFLOW_MQTT_USERNAME={username}\n"
        f"CARBONFLOW_MQTT_PASSWORD={password.get_secret_value()}\n"
    )
    if password_file is not None:
        write_private(password_file, lines)
        typer.echo(f"credentials of {username} written to {password_file} (mode 0600)")
    else:
        typer.echo(f"MQTT credentials of {username} (shown once; keep them safe):")
        typer.echo(lines, nl=False)


def _apply() -> None:
    """Regenerate the local broker's password file and ACL from the registry; reload it."""
    from carbonflow.stack.manager import Stack

    stack = Stack(
        stack=StackSettings(), mqtt=MqttSettings(), kafka=KafkaSettings(), db=DatabaseSettings()
    )
    if stack.postgres.pid() is None:
        typer.echo(
            f"the local stack ({stack.settings.state_dir}) is not running; "
            "`carbonflow stack up` applies the registry to its broker"
        )
        return
    access = stack.sync_mqtt_access()
    typer.echo(f"local broker updated: {len(access.identities)} MQTT identities")


def _run(action: Callable[[], None]) -> None:
    import psycopg

    try:
        action()
    except CarbonFlowError as exc:
        raise _fail(str(exc)) from exc
    except psycopg.Error as exc:
        raise _fail(f"database: {exc}") from exc


@mqtt_app.command("issue")
def issue(
    username: Annotated[str, typer.Argument(help="A gateway id, or a service name")],
    role: Annotated[str, typer.Option(help="gateway or service")] = "gateway",
    password_file: PasswordFile = None,
) -> None:
    """Issue credentials (a new password replaces the old one at once)."""
    from carbonflow.mqtt_auth import store
    from carbonflow.mqtt_auth.access import Role

    try:
        chosen = Role(role)
    except ValueError as exc:
        raise typer.BadParameter(f"role must be one of {', '.join(Role)}") from exc

    def act() -> None:
        with _connect() as conn:
            password = store.issue(conn, username, chosen)
        _hand_over(username, password, password_file)
        _apply()

    _run(act)


@mqtt_app.command("revoke")
def revoke(username: Annotated[str, typer.Argument(help="The identity to shut out")]) -> None:
    """Revoke credentials; the broker disconnects the identity and refuses it from now on."""
    from carbonflow.mqtt_auth import store

    def act() -> None:
        with _connect() as conn:
            if not store.revoke(conn, username):
                raise _fail(f"{username} has no active credentials")
        typer.echo(f"revoked {username}")
        _apply()

    _run(act)


@mqtt_app.command("list")
def list_identities() -> None:
    """Every identity: role, devices (gateways), issued and revoked times."""
    from carbonflow.mqtt_auth import store

    with _connect() as conn:
        records = store.list_credentials(conn)
    for record in records:
        state = f"revoked {record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else "active"
        typer.echo(
            f"{record.username:<32} {record.role.value:<8} {record.devices:>5} devices  "
            f"issued {record.issued_at:%Y-%m-%d %H:%M}  {state}"
        )


@mqtt_app.command("sync")
def sync() -> None:
    """Apply the registry to the local broker (after editing devices by other means)."""
    _run(_apply)


@device_app.command("add")
def add_device(
    device_id: Annotated[str, typer.Argument(help="The meter's id, e.g. press-07-main")],
    gateway: Annotated[str, typer.Option(help="The gateway that reads it (its MQTT username)")],
    asset: Annotated[str, typer.Option(help="The registered asset it measures")],
    metric: Annotated[str, typer.Option(help="What it measures")] = "active_power",
    unit: Annotated[str, typer.Option(help="Canonical unit of the metric (checked)")] = "",
    carrier: Annotated[str, typer.Option(help="Energy carrier")] = "electricity",
    description: Annotated[str, typer.Option(help="Free text")] = "",
    password_file: PasswordFile = None,
) -> None:
    """Register a device; its gateway gets MQTT credentials if it has none yet.

    The broker then lets the gateway publish for this device (and only its own devices).
    """
    from pydantic import ValidationError

    from carbonflow.mqtt_auth import store
    from carbonflow.mqtt_auth.access import Role, check_username
    from carbonflow.registry import DeviceRegistration, register_device

    try:
        device = DeviceRegistration(
            device_id=device_id,
            asset_id=asset,
            gateway_id=gateway,
            metric=metric,
            unit=unit,
            energy_carrier=carrier,
            description=description,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'device'}: {e['msg']}" for e in exc.errors()
        )
        raise _fail(problems) from exc

    def act() -> None:
        check_username(device.gateway_id, Role.GATEWAY)
        with _connect() as conn:
            role = store.active_role(conn, device.gateway_id)
            added = register_device(conn, device)
            typer.echo(
                f"{'registered' if added else 'already registered:'} {device.device_id}"
                f" under gateway {device.gateway_id}"
            )
            password = None if role is not None else store.issue(conn, gateway, Role.GATEWAY)
        if password is not None:
            _hand_over(device.gateway_id, password, password_file)
        else:
            typer.echo(f"gateway {device.gateway_id} already has credentials; keeping them")
        _apply()

    _run(act)
