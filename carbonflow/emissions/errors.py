"""Errors of the emissions calculations: one family under ``CarbonFlowError``."""

from __future__ import annotations

from dataclasses import dataclass

from carbonflow.errors import CarbonFlowError


class EmissionsError(CarbonFlowError):
    """An emissions figure could not be computed from the inputs given."""


class FactorInputError(EmissionsError):
    """A factor or quantity is out of range, or its unit does not fit the calculation."""


class MissingFactorError(EmissionsError):
    """No factor applies to the time asked for (before a series starts, or in a gap)."""


class AllocationError(EmissionsError):
    """Contractual instruments cannot be allocated unambiguously (e.g. two supplier factors)."""


@dataclass(frozen=True, slots=True)
class FormatProblem:
    """One problem in an imported file: 1-based line and column, and what is wrong."""

    line: int
    column: int | None
    column_name: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}"
        if self.column is not None:
            where += f", column {self.column} ({self.column_name})"
        return f"{where}: {self.message}"


class GridSeriesFormatError(EmissionsError):
    """An hourly grid-intensity file broke the import format; every problem found is listed."""

    def __init__(self, problems: list[FormatProblem], truncated: bool = False) -> None:
        self.problems = tuple(problems)
        self.truncated = truncated
        lines = [str(p) for p in self.problems]
        if truncated:
            lines.append("(further problems not listed)")
        super().__init__("hourly grid-intensity file rejected:\n" + "\n".join(lines))
