"""The factor data file (``data/emission_factors.csv``): one validated row per published fact.

The file keeps every column of the published table as published (``region``, ``fuel``,
``gas``, ``value``, ``unit``, ``valid_from``, ``valid_to`` with ``valid_to`` the last day
inclusive, ``source``, ``source_detail``) and adds the keys a machine looks factors up by:
``region_code``, ``carrier``, ``gas_key``, ``parameter``, ``variant``, ``gwp_set`` and the
``canonical_unit`` the value converts to (see ``carbonflow.factors.units``).
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from carbonflow.config import REPO_ROOT
from carbonflow.factors.codes import (
    NO_CARRIER,
    NO_GAS,
    STANDARD_VARIANT,
    GwpSet,
    Parameter,
    is_region_code,
)
from carbonflow.factors.errors import FactorDataError, UnknownUnitError
from carbonflow.factors.units import Normalised, normalise

DEFAULT_FACTORS_FILE = REPO_ROOT / "data" / "emission_factors.csv"

COLUMNS = (
    "factor_id",
    "scope",
    "category",
    "region",
    "region_code",
    "fuel",
    "carrier",
    "gas",
    "gas_key",
    "parameter",
    "variant",
    "gwp_set",
    "value",
    "unit",
    "canonical_unit",
    "valid_from",
    "valid_to",
    "source",
    "source_detail",
)

Key = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
NonEmpty = Annotated[str, Field(min_length=1)]


def valid_until(valid_to: date | None) -> date | None:
    """The exclusive end of a period whose last day is ``valid_to`` (None: open-ended)."""
    return None if valid_to is None else valid_to + timedelta(days=1)


class FactorRow(BaseModel):
    """One published factor, with the machine keys added to it."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    factor_id: Annotated[str, Field(pattern=r"^[A-Z0-9][A-Z0-9_]*$")]
    scope: Annotated[str, Field(pattern=r"^(scope1|scope2|scope3|pcf|all)$")]
    category: Annotated[str, Field(pattern=r"^(grid_electricity|fuel_combustion|gwp)$")]
    region: NonEmpty
    region_code: str
    fuel: str
    carrier: Key
    gas: NonEmpty
    gas_key: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+$")]
    parameter: Parameter
    variant: Key
    gwp_set: GwpSet | None
    value: Decimal = Field(allow_inf_nan=False)
    unit: NonEmpty
    canonical_unit: NonEmpty
    valid_from: date | None
    valid_to: date | None
    source: NonEmpty
    source_detail: str

    @field_validator("gwp_set", "valid_from", "valid_to", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("region_code")
    @classmethod
    def _region_code(cls, value: str) -> str:
        if not is_region_code(value):
            raise ValueError("not a region code (CN, CN-East, GLOBAL, ...)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.valid_from and self.valid_to and self.valid_to < self.valid_from:
            raise ValueError("valid_to is before valid_from")
        if (self.parameter is Parameter.GWP) != (self.gwp_set is not None):
            raise ValueError("gwp_set is given exactly for GWP factors")
        if self.parameter is Parameter.GWP and self.carrier != NO_CARRIER:
            raise ValueError(f"a GWP applies to a gas: carrier must be {NO_CARRIER!r}")
        if self.value < 0 or (self.parameter is Parameter.OXIDATION_FRACTION and self.value > 1):
            raise ValueError(f"value {self.value} is out of range for {self.parameter}")
        try:
            normalised = self.normalised
        except UnknownUnitError as exc:
            raise ValueError(str(exc)) from exc
        if normalised.unit != self.canonical_unit:
            raise ValueError(
                f"unit {self.unit!r} converts to {normalised.unit!r}, not to "
                f"canonical_unit {self.canonical_unit!r}"
            )
        if (normalised.calorific_basis == "gross") != (self.variant == "gross_cv"):
            raise ValueError("a gross-CV unit goes with variant 'gross_cv' and only with it")
        return self

    @property
    def normalised(self) -> Normalised:
        return normalise(self.value, self.unit, substance_of(self.parameter, self.gas_key))

    @property
    def canonical_value(self) -> Decimal:
        return self.normalised.value

    @property
    def valid_until(self) -> date | None:
        return valid_until(self.valid_to)

    def lookup_key(self) -> tuple[str, ...]:
        """What a lookup tells factors apart by (besides time and region)."""
        return (
            self.region_code.casefold(),
            self.carrier,
            self.parameter.value,
            self.gas_key,
            self.variant,
            self.gwp_set.value if self.gwp_set else "",
            self.canonical_unit,
        )

    def csv_record(self) -> dict[str, str]:
        record = self.model_dump(mode="json")
        return {column: "" if record[column] is None else str(record[column]) for column in COLUMNS}


def substance_of(parameter: Parameter, gas_key: str) -> str | None:
    """The substance a unit without one refers to: the gas of an emission factor."""
    if parameter is Parameter.EMISSION_FACTOR and gas_key != NO_GAS:
        return gas_key.split("_", 1)[0]  # CH4_fossil is CH4
    if parameter is Parameter.CARBON_CONTENT:
        return "C"
    return None


def parse_factors(text: str) -> list[FactorRow]:
    """Validate every row of a factor file; the first bad row raises, naming row and column.

    Rows are numbered as a spreadsheet shows them: the header is row 1.
    """
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or set(reader.fieldnames) != set(COLUMNS):
        missing = sorted(set(COLUMNS) - set(reader.fieldnames or ()))
        extra = sorted(set(reader.fieldnames or ()) - set(COLUMNS))
        raise FactorDataError(
            f"header must name the columns {COLUMNS}; missing {missing}, unexpected {extra}", row=1
        )
    rows: list[FactorRow] = []
    for number, record in enumerate(reader, start=2):
        if None in record:
            raise FactorDataError("more fields than columns", row=number)
        try:
            rows.append(FactorRow.model_validate(record))
        except ValidationError as exc:
            error = exc.errors()[0]
            column = str(error["loc"][0]) if error["loc"] else None
            raise FactorDataError(error["msg"], row=number, column=column) from exc
    check_unique(rows)
    return rows


def load_factors(path: Path = DEFAULT_FACTORS_FILE) -> list[FactorRow]:
    return parse_factors(path.read_text(encoding="utf-8"))


def write_factors(rows: Iterable[FactorRow], out: io.TextIOBase | io.StringIO) -> None:
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.csv_record())


def check_unique(rows: Sequence[FactorRow]) -> None:
    """Factor ids are unique, and no two factors answer the same lookup on the same day."""
    seen: dict[str, int] = {}
    by_key: dict[tuple[str, ...], list[tuple[int, FactorRow]]] = defaultdict(list)
    for number, row in enumerate(rows, start=2):
        if row.factor_id in seen:
            raise FactorDataError(
                f"factor_id {row.factor_id} repeats row {seen[row.factor_id]}",
                row=number,
                column="factor_id",
            )
        seen[row.factor_id] = number
        for other_number, other in by_key[row.lookup_key()]:
            if _overlap(row, other):
                raise FactorDataError(
                    f"{row.factor_id} and {other.factor_id} (row {other_number}) answer the same "
                    "lookup in overlapping periods; give one of them another variant",
                    row=number,
                    column="valid_from",
                )
        by_key[row.lookup_key()].append((number, row))


def _overlap(a: FactorRow, b: FactorRow) -> bool:
    a_from, b_from = a.valid_from or date.min, b.valid_from or date.min
    a_to, b_to = a.valid_to or date.max, b.valid_to or date.max
    return a_from <= b_to and b_from <= a_to


__all__ = [
    "COLUMNS",
    "DEFAULT_FACTORS_FILE",
    "STANDARD_VARIANT",
    "FactorRow",
    "load_factors",
    "parse_factors",
    "write_factors",
]
