"""``carbonflow instruments add|list`` and ``carbonflow emissions market``: contractual
instruments and market-based Scope 2."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from carbonflow.emissions.scope2_market import InstrumentKind
from carbonflow.factors.cli import _connection

if TYPE_CHECKING:
    from carbonflow.instruments import InstrumentVersion

instruments_app = typer.Typer(
    help="Contractual instruments (certificates, PPAs, supplier factors); corrections add a "
    "version.",
    no_args_is_help=True,
)


@instruments_app.command("add")
def add(
    instrument_id: Annotated[str, typer.Argument(help="Stable id, e.g. GEC-2024-0001")],
    kind: Annotated[InstrumentKind, typer.Option(help="certificate, ppa or supplier")],
    first_day: Annotated[datetime, typer.Option("--from", formats=["%Y-%m-%d"])],
    last_day: Annotated[
        datetime, typer.Option("--to", formats=["%Y-%m-%d"], help="Last day, inclusive")
    ],
    kg_co2e_per_kwh: Annotated[str, typer.Option(help="The instrument's emission factor")],
    evidence: Annotated[str, typer.Option(help="Certificate number, contract, invoice ...")],
    site: Annotated[str | None, typer.Option(help="Held by this site")] = None,
    org: Annotated[str | None, typer.Option(help="Held by this organisation")] = None,
    volume_kwh: Annotated[
        str | None, typer.Option(help="kWh it covers; omit for a supplier factor on everything")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why (required for a correction)")] = "",
) -> None:
    """Record an instrument, or correct one (same id: a new version; the old one stays)."""
    from carbonflow import instruments

    with _connection() as conn:  # also reports a refused instrument, as an error line
        new = instruments.validate(
            instrument_id=instrument_id,
            site_id=site,
            org_id=org,
            kind=kind,
            first_day=first_day.date(),
            last_day=last_day.date(),
            volume_kwh=volume_kwh,
            kg_co2e_per_kwh=kg_co2e_per_kwh,
            evidence=evidence,
            reason=reason,
        )
        stored = instruments.record(conn, new)
    typer.echo(f"recorded {_line(stored)}")


@instruments_app.command("list")
def list_(
    site: Annotated[str | None, typer.Option(help="Held by this site")] = None,
    org: Annotated[str | None, typer.Option(help="Held by this organisation")] = None,
    all_versions: Annotated[bool, typer.Option(help="Every version, not the latest")] = False,
) -> None:
    """Instruments, latest version of each (or all versions)."""
    from carbonflow import instruments

    with _connection() as conn:
        found = instruments.listing(conn, site_id=site, org_id=org, all_versions=all_versions)
    for version in found:
        typer.echo(_line(version))
        typer.echo(
            f"    evidence: {version.evidence}; recorded {version.recorded_at:%Y-%m-%d}:"
            f" {version.reason}"
        )


def _line(v: InstrumentVersion) -> str:
    volume = "all consumption" if v.volume_kwh is None else f"{v.volume_kwh} kWh"
    return (
        f"{v.instrument_id:<24} v{v.version:<3} {v.kind.value:<11} {v.holder:<28} "
        f"{v.first_day} to {v.last_day}  {volume}  {v.kg_co2e_per_kwh} kgCO2e/kWh"
    )


def emissions_market(
    month: Annotated[str, typer.Option(help="Local calendar month, YYYY-MM")],
    site: Annotated[str | None, typer.Option(help="A site")] = None,
    org: Annotated[str | None, typer.Option(help="An organisation: each of its sites")] = None,
) -> None:
    """Compute market-based Scope 2 of a site's (or organisation's) electricity for a month
    and store it; a changed figure becomes a new version, the old one stays."""
    from services.stream.market import parse_month
    from services.stream.market_store import compute_month

    if (site is None) == (org is None):
        raise typer.BadParameter("name a --site or an --org")
    try:
        first_day = parse_month(month)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    with _connection() as conn:
        stored = compute_month(conn, first_day, site_id=site, org_id=org)
    shown = [s for s in stored if site is None or s.figure.site_id == site]
    for s in shown:
        f = s.figure
        state = "new version" if s.new else "unchanged"
        typer.echo(
            f"{f.site_id} {f.month:%Y-%m} v{s.version} ({state}): {f.kwh:.3f} kWh, "
            f"{f.kg_co2e:.3f} kgCO2e market-based, coverage {f.coverage:.1%}"
        )
        for share in f.instruments:
            typer.echo(
                f"    {share.ref} {share.kind:<11} {share.kwh:.3f} kWh  {share.kg_co2e:.3f} kgCO2e"
            )
        r = f.residual
        typer.echo(
            f"    residual {f.residual_kwh:.3f} kWh  {f.residual_kg_co2e:.3f} kgCO2e under "
            f"{r.factor.ref} ({r.basis}{', proxy' if r.proxy else ''})"
        )
        typer.echo(f"    {r.note}")
    if org is not None:
        typer.echo(
            f"{org} {first_day:%Y-%m}: {sum(s.figure.kwh for s in stored):.3f} kWh, "
            f"{sum(s.figure.kg_co2e for s in stored):.3f} kgCO2e market-based"
        )
