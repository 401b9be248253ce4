"""``carbonflow factors seed|list|show|restate|lookup|load-hourly``: the factor registry."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from carbonflow.config import DatabaseSettings
from carbonflow.errors import CarbonFlowError

if TYPE_CHECKING:
    import psycopg

    from carbonflow.factors.selection import FactorVersion

factors_app = typer.Typer(
    help="Emission factors: effective-dated and versioned; a restatement adds a version.",
    no_args_is_help=True,
)


@contextmanager
def _connection() -> Iterator[psycopg.Connection[Any]]:
    """A connection to the configured database; any CarbonFlow error ends the command."""
    import psycopg

    database = DatabaseSettings()
    try:
        with psycopg.connect(database.conninfo(), autocommit=True) as conn:
            yield conn
    except psycopg.OperationalError as exc:
        typer.secho(f"error: cannot connect to database {database.name}: {exc}", err=True)
        raise typer.Exit(1) from exc
    except CarbonFlowError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from exc


def _line(version: FactorVersion) -> str:
    return (
        f"{version.factor_id:<32} v{version.version:<3} {version.region_code:<16} "
        f"{version.carrier:<16} {version.parameter.value:<18} {version.gas:<14} "
        f"{version.value} {version.unit}  [{version.period()}]"
    )


@factors_app.command("seed")
def seed(
    file: Annotated[
        Path | None, typer.Option(help="Factor file; default data/emission_factors.csv")
    ] = None,
) -> None:
    """Record version 1 of every factor in the data file that is not yet registered."""
    from carbonflow.factors import store
    from carbonflow.factors.model import DEFAULT_FACTORS_FILE

    with _connection() as conn:
        report = store.seed_from_file(conn, file or DEFAULT_FACTORS_FILE)
    typer.echo(f"{len(report.added)} factors added, {report.unchanged} unchanged")
    if report.differs:
        typer.echo(
            f"stored version 1 differs from the file (restate to apply): "
            f"{', '.join(report.differs)}"
        )


@factors_app.command("list")
def list_(
    region: Annotated[
        str | None, typer.Option(help="Region code, e.g. CN-East, DE, GLOBAL")
    ] = None,
    carrier: Annotated[str | None, typer.Option(help="e.g. electricity, natural_gas")] = None,
    parameter: Annotated[str | None, typer.Option(help="emission_factor, ncv, ...")] = None,
) -> None:
    """The latest version of each factor."""
    from carbonflow.factors import store
    from carbonflow.factors.codes import Parameter

    with _connection() as conn:
        found = store.list_factors(
            conn,
            region=region,
            carrier=carrier,
            parameter=Parameter(parameter) if parameter else None,
        )
    for version in found:
        typer.echo(_line(version))


@factors_app.command("show")
def show(factor_id: str) -> None:
    """Every version of one factor, with its source and the reason it was recorded."""
    from carbonflow.factors import store

    with _connection() as conn:
        history = store.versions(conn, factor_id)
    for version in history:
        typer.echo(_line(version))
        typer.echo(f"    as published: {version.source_value} {version.source_unit}")
        typer.echo(f"    source: {version.source}")
        if version.source_detail:
            typer.echo(f"    detail: {version.source_detail}")
        typer.echo(f"    recorded {version.recorded_at.isoformat()}: {version.reason}")


@factors_app.command("restate")
def restate(
    factor_id: str,
    value: Annotated[str, typer.Option(help="The new value, in --unit")],
    unit: Annotated[str, typer.Option(help="Any unit convertible to the factor's unit")],
    reason: Annotated[str, typer.Option(help="Why the factor is restated")],
    source: Annotated[str, typer.Option(help="Where the new value is published")],
    valid_from: Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"])] = None,
    valid_to: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="Last day, inclusive")
    ] = None,
    source_detail: str = "",
) -> None:
    """Record a new version of a factor; earlier versions stay queryable."""
    from carbonflow.factors import store

    with _connection() as conn:
        version = store.restate(
            conn,
            factor_id,
            value,
            unit,
            valid_from.date() if valid_from else None,
            valid_to.date() if valid_to else None,
            reason,
            source,
            source_detail,
        )
    typer.echo(f"recorded {_line(version)}")
    from services.stream.repricing import reprice_now

    repriced = reprice_now(DatabaseSettings(), factor_id=factor_id)
    typer.echo(
        f"priced {repriced.minutes} minutes again: {repriced.changed} earlier figures "
        f"superseded (kept), {repriced.unpriced} without a factor"
    )


@factors_app.command("lookup")
def lookup(
    carrier: Annotated[str, typer.Option(help="e.g. electricity, natural_gas, raw_coal")],
    parameter: Annotated[str, typer.Option(help="emission_factor, ncv, carbon_content, ...")],
    gas: Annotated[str, typer.Option(help="CO2, CO2e, CH4, N2O, none")] = "CO2",
    site: Annotated[
        str | None, typer.Option(help="A registered site (region, country, tz)")
    ] = None,
    grid_region: str | None = None,
    country: str | None = None,
    variant: str = "standard",
    unit: Annotated[str | None, typer.Option(help="Only factors in this canonical unit")] = None,
    at: Annotated[datetime | None, typer.Option(help="Moment (UTC if naive); default now")] = None,
) -> None:
    """Which factor version answers for a place, a carrier and a moment."""
    from carbonflow.factors import store
    from carbonflow.factors.codes import Parameter
    from carbonflow.factors.selection import FactorKey

    key = FactorKey(
        carrier=carrier, parameter=Parameter(parameter), gas=gas, variant=variant, unit=unit
    )
    moment = at.replace(tzinfo=at.tzinfo or UTC) if at else datetime.now(UTC)
    with _connection() as conn:
        if site is not None:
            match = store.lookup_for_site(conn, site, key, moment)
        else:
            match = store.lookup(conn, key, moment, grid_region=grid_region, country=country)
    typer.echo(_line(match.factor))
    typer.echo(f"    {match.note}")


@factors_app.command("load-hourly")
def load_hourly(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="Hourly grid-intensity CSV (see README)"),
    ],
    series_id: Annotated[str, typer.Option(help="The series' id, e.g. CN_EAST_HOURLY")],
    source: Annotated[str, typer.Option(help="Publisher, dataset and release of the values")],
    region: Annotated[
        str | None, typer.Option(help="The region to load, when the file holds several")
    ] = None,
    allow_gaps: Annotated[
        bool, typer.Option(help="Accept missing hours (they stay unpriced, never filled)")
    ] = False,
    reason: Annotated[str, typer.Option(help="Why this version is loaded")] = "",
) -> None:
    """Record an hourly grid-intensity series as a new version; earlier versions stay."""
    from carbonflow.factors.hourly import load_hourly_series

    with _connection() as conn:
        loaded = load_hourly_series(
            conn,
            file.read_text(encoding="utf-8"),
            series_id=series_id,
            source=source,
            region=region,
            allow_gaps=allow_gaps,
            reason=reason,
            file_name=file.name,
        )
    typer.echo(
        f"recorded {loaded.series_id} v{loaded.version} for {loaded.region_code}: "
        f"{loaded.hours} hours from {loaded.first_hour.isoformat()} to "
        f"{loaded.end_hour.isoformat()} ({loaded.gap_hours} h missing), "
        f"mean {loaded.mean_kg_co2e_per_kwh:.4f} kgCO2e/kWh"
    )
    from services.stream.repricing import reprice_now

    repriced = reprice_now(
        DatabaseSettings(),
        region=loaded.region_code,
        span=(loaded.first_hour, loaded.end_hour),
    )
    typer.echo(
        f"priced {repriced.minutes} minutes of {loaded.region_code} again: "
        f"{repriced.changed} earlier figures superseded, {repriced.unpriced} without a factor"
    )
