"""`carbonflow stack up|down|status|reset`: the local services from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings
from carbonflow.errors import StackError

if TYPE_CHECKING:
    from carbonflow.stack import ServiceStatus, Stack

stack_app = typer.Typer(
    help="The local Mosquitto, PostgreSQL + TimescaleDB and Kafka (real servers on 127.0.0.1).",
    no_args_is_help=True,
)


def _stack() -> Stack:
    # Imported here so mounting this app costs nothing on installs without the stack extra
    # (paho, psycopg, aiokafka), e.g. an edge gateway.
    from carbonflow.stack.manager import Stack

    # Settings are read from the environment here, at the entry point, and nowhere below.
    return Stack(
        stack=StackSettings(), mqtt=MqttSettings(), kafka=KafkaSettings(), db=DatabaseSettings()
    )


def _print(statuses: list[ServiceStatus]) -> None:
    width = max(len(status.name) for status in statuses)
    for status in statuses:
        state = "running" if status.running else "stopped"
        pid = f"pid {status.pid}" if status.pid is not None else "-"
        typer.echo(f"{status.name:<{width}}  {state:<7}  {pid:<10}  {status.address}")
        typer.echo(f"{'':<{width}}  {status.detail}")


def _fail(exc: StackError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


@stack_app.command()
def up() -> None:
    """Install what is missing, start what is not running, wait until every service answers."""
    try:
        statuses = _stack().up()
    except StackError as exc:
        raise _fail(exc) from exc
    _print(statuses)


@stack_app.command()
def down() -> None:
    """Stop the services the stack started (data is kept)."""
    try:
        _stack().down()
    except StackError as exc:
        raise _fail(exc) from exc


@stack_app.command()
def status() -> None:
    """Show each service, its pid and where it listens; exit 1 if any is not running."""
    statuses = _stack().status()
    _print(statuses)
    if not all(status.running for status in statuses):
        raise typer.Exit(code=1)


@stack_app.command()
def reset(
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Stop everything and delete the state dir (databases, topics, logs); keep the cache."""
    stack = _stack()
    if not yes:
        typer.confirm(f"Delete all local stack data in {stack.settings.state_dir}?", abort=True)
    try:
        stack.reset()
    except StackError as exc:
        raise _fail(exc) from exc
