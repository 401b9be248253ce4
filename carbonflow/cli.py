"""The ``carbonflow`` command: local stack, database, each service, the simulator, the demo."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from carbonflow import logs
from carbonflow.config import DatabaseSettings, KafkaSettings, MqttSettings, StackSettings

app = typer.Typer(help="CarbonFlow: real-time factory energy and emissions.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema and registry.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.callback()
def main(
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="CARBONFLOW_LOG_LEVEL", help="DEBUG, INFO, ...")
    ] = "INFO",
) -> None:
    """Logging is configured here, once, for every command."""
    logs.configure(log_level)


def _register_stack() -> None:
    try:
        from carbonflow.stack.cli import stack_app
    except ImportError:  # the stack extra is not installed (e.g. on an edge gateway)
        return
    app.add_typer(stack_app, name="stack", help="The local stack: Mosquitto, TimescaleDB, Kafka.")


_register_stack()


def _register_access() -> None:
    from carbonflow.mqtt_auth.cli import device_app, mqtt_app

    app.add_typer(mqtt_app, name="mqtt")
    app.add_typer(device_app, name="device")


_register_access()


def _register_factors() -> None:
    from carbonflow.factors.cli import factors_app

    app.add_typer(factors_app, name="factors")


_register_factors()

emissions_app = typer.Typer(help="Emissions figures: price them again after factors changed.")
app.add_typer(emissions_app, name="emissions")


def _register_instruments() -> None:
    from carbonflow.instruments_cli import emissions_market, instruments_app

    app.add_typer(instruments_app, name="instruments")
    emissions_app.command("market")(emissions_market)


_register_instruments()


@emissions_app.command("reprice")
def emissions_reprice(
    factor: Annotated[
        str | None, typer.Option(help="Price again the minutes this factor priced")
    ] = None,
    proxies: Annotated[
        bool, typer.Option(help="Price again every minute priced by a proxy factor")
    ] = False,
) -> None:
    """Price emissions again with the factors as they stand now; earlier figures are kept,
    marked superseded (e.g. after this year's grid factor is published: --proxies)."""
    if factor is None and not proxies:
        raise typer.BadParameter("name a --factor, or --proxies, or both")
    from services.stream.repricing import reprice_now

    repriced = reprice_now(DatabaseSettings(), factor_id=factor, proxies=proxies)
    typer.echo(
        f"priced {repriced.minutes} minutes again: {repriced.changed} under another factor "
        f"version, {repriced.unpriced} without a factor, {repriced.rollup_rows} rollup rows"
    )


@db_app.command("migrate")
def db_migrate(revision: str = "head") -> None:
    """Create or upgrade the database schema."""
    from carbonflow import db

    db.migrate(DatabaseSettings(), revision)


@db_app.command("seed-demo")
def db_seed_demo() -> None:
    """Register the simulated demo factory (organisation, sites, lines, machines, devices)."""
    import psycopg

    from carbonflow.registry import upsert_layout
    from edge.simulator.factory import demo_factory

    layout = demo_factory()
    with psycopg.connect(DatabaseSettings().conninfo()) as conn:
        upsert_layout(conn, layout)
    typer.echo(f"registered {len(layout.machines)} devices on {len(layout.sites)} sites")


@app.command()
def ingest() -> None:
    """Run the MQTT -> Kafka ingest service."""
    from services.ingest.bridge import run
    from services.ingest.settings import IngestSettings

    run(MqttSettings(), KafkaSettings(), DatabaseSettings(), IngestSettings())


@app.command()
def stream() -> None:
    """Run a stream worker (Faust): readings, energy, emissions and rollups into TimescaleDB."""
    from services.stream.app import run
    from services.stream.settings import StreamSettings

    # Faust's worker sets up logging again; hand it the level chosen on the command line.
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    run(KafkaSettings(), DatabaseSettings(), StreamSettings(), level)


@app.command()
def api() -> None:
    """Run the REST API."""
    from services.api.main import run
    from services.api.settings import ApiSettings

    run(ApiSettings(), DatabaseSettings())


@app.command()
def simulate(
    replay_from: Annotated[
        datetime | None, typer.Option(help="Replay history from this UTC time instead of live")
    ] = None,
    replay_to: Annotated[datetime | None, typer.Option(help="End of the replayed history")] = None,
) -> None:
    """Run the factory simulator: live by default, or replay a historical range."""
    from edge.simulator.publisher import run_simulator
    from edge.simulator.settings import SimulatorSettings

    replay = None
    if replay_from is not None or replay_to is not None:
        if replay_from is None or replay_to is None:
            raise typer.BadParameter("--replay-from and --replay-to go together")
        replay = (replay_from, replay_to)
    run_simulator(MqttSettings(), SimulatorSettings(), stop=None, replay=replay)


gateway_app = typer.Typer(
    help="The edge gateway: poll meters, buffer, publish.", no_args_is_help=True
)
app.add_typer(gateway_app, name="gateway")


@gateway_app.command("run")
def gateway_run(
    config: Annotated[
        Path,
        typer.Option(
            "--config", envvar="CARBONFLOW_GATEWAY_CONFIG", help="The gateway's config file (TOML)"
        ),
    ],
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve metrics on this port (0: off); default 19102", show_default=False),
    ] = None,
) -> None:
    """Run an edge gateway until SIGINT/SIGTERM."""
    import os

    from edge.errors import EdgeError
    from edge.gateway.app import run_gateway
    from edge.gateway.settings import GatewaySettings

    settings = (
        GatewaySettings() if metrics_port is None else GatewaySettings(metrics_port=metrics_port)
    )
    try:
        run_gateway(config, settings, os.environ)
    except EdgeError as exc:  # an unusable config file or password: say so, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def demo() -> None:
    """Start everything on a simulated factory and run until Ctrl-C."""
    from carbonflow.demo import run_demo

    run_demo(StackSettings(), MqttSettings(), KafkaSettings(), DatabaseSettings())
