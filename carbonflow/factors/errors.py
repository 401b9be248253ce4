"""Errors of the emission factor registry, all under ``CarbonFlowError``."""

from __future__ import annotations

from carbonflow.errors import CarbonFlowError


class FactorError(CarbonFlowError):
    """Base class of every emission factor error."""


class UnknownUnitError(FactorError):
    """A unit the registry does not know how to convert; never guessed."""


class FactorDataError(FactorError):
    """A row of a factor file is invalid; the message names its row and column."""

    def __init__(self, message: str, *, row: int | None = None, column: str | None = None) -> None:
        where = ", ".join(
            part
            for part in (
                f"row {row}" if row is not None else "",
                f"column {column!r}" if column else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.row = row
        self.column = column


class FactorNotFoundError(FactorError):
    """No factor (not even a proxy) answers a lookup, or an unknown factor id / version."""


class AmbiguousFactorError(FactorError):
    """Two different factors answer the same lookup equally well; the data must say which."""


class RestatementError(FactorError):
    """A restatement was refused (bad value, incompatible unit, empty period, no reason)."""
