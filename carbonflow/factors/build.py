"""Build the project's factor file from the published table it is compiled from.

    python -m carbonflow.factors.build published.csv > data/emission_factors.csv

Every published column and value is kept as is; the machine keys are derived by the rules in
``carbonflow.factors.codes`` and the canonical unit by ``carbonflow.factors.units``. A label
those rules do not know stops the build (exit 1) instead of being guessed. The output is
validated exactly as the product loads it.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from carbonflow.factors.codes import (
    CARRIERS,
    GASES,
    Parameter,
    gwp_set_of,
    parameter_of,
    region_code,
    variant_of,
)
from carbonflow.factors.errors import FactorDataError, FactorError, UnknownUnitError
from carbonflow.factors.model import FactorRow, check_unique, substance_of, write_factors
from carbonflow.factors.units import normalise

PUBLISHED_COLUMNS = (
    "factor_id",
    "scope",
    "category",
    "region",
    "fuel",
    "gas",
    "value",
    "unit",
    "valid_from",
    "valid_to",
    "source",
    "source_detail",
)


def derive(record: Mapping[str, str]) -> dict[str, str]:
    """The published record plus its machine keys; ValueError/UnknownUnitError if unknown."""
    category, factor_id = record["category"], record["factor_id"]
    if record["fuel"] not in CARRIERS:
        raise ValueError(f"unknown fuel/carrier label {record['fuel']!r}")
    if record["gas"] not in GASES:
        raise ValueError(f"unknown gas label {record['gas']!r}")
    parameter = parameter_of(category, record["unit"])
    # A carbon content is a mass of carbon, whatever gas it is published under.
    gas_key = "C" if parameter is Parameter.CARBON_CONTENT else GASES[record["gas"]]
    canonical = normalise(
        Decimal(record["value"]), record["unit"], substance_of(parameter, gas_key)
    ).unit
    return {
        **record,
        "region_code": region_code(record["region"]),
        "carrier": CARRIERS[record["fuel"]],
        "gas_key": gas_key,
        "parameter": parameter.value,
        "variant": variant_of(factor_id),
        "gwp_set": gwp_set_of(factor_id).value if parameter is Parameter.GWP else "",
        "canonical_unit": canonical,
    }


def build(published: str) -> list[FactorRow]:
    reader = csv.DictReader(io.StringIO(published))
    if tuple(reader.fieldnames or ()) != PUBLISHED_COLUMNS:
        raise FactorDataError(f"expected the columns {PUBLISHED_COLUMNS}", row=1)
    rows = []
    for number, record in enumerate(reader, start=2):
        try:
            rows.append(FactorRow.model_validate(derive(record)))
        except (ValueError, UnknownUnitError) as exc:  # pydantic's ValidationError included
            raise FactorDataError(str(exc), row=number) from exc
    check_unique(rows)
    return rows


def main(
    published: Annotated[Path, typer.Argument(help="The published factor table (CSV, UTF-8)")],
) -> None:
    """Write the project's factor file to standard output."""
    try:
        rows = build(published.read_text(encoding="utf-8"))
    except FactorError as exc:
        typer.echo(f"error: {published}: {exc}", err=True)
        raise typer.Exit(1) from exc
    out = io.StringIO()
    write_factors(rows, out)
    sys.stdout.write(out.getvalue())


if __name__ == "__main__":
    typer.run(main)
