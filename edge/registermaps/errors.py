"""Register map errors, with one ``path.to.field: message`` line per problem."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from edge.errors import EdgeError

__all__ = ["MissingMetricsError", "RegisterMapError", "format_problems"]


class RegisterMapError(EdgeError):
    """A register map is missing, unreadable, not TOML, or not a valid map."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        super().__init__(f"invalid register map {source}:\n{lines}")

    def summary(self) -> str:
        """Every problem on one line, for reporting inside another file's error."""
        return f"invalid register map {self.source}: {'; '.join(self.problems)}"


class MissingMetricsError(EdgeError):
    """A device asks for metrics its register map does not provide."""


_SHOULD = re.compile(r"^(Input|String|List|Tuple|Dictionary|Value|Object) should (be|have|match) ")


def _format_loc(loc: Sequence[str | int]) -> str:
    # "[key]" is pydantic's marker for an error in a dict key; the file has no such level.
    parts = [str(part) for part in loc if part != "[key]"]
    return ".".join(parts) or "(top level)"


def _message(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    message = error["msg"]
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    return _SHOULD.sub(r"must \2 ", message)


def format_problems(exc: ValidationError) -> list[str]:
    """One ``path.to.field: message`` line per problem, without duplicates."""
    lines: list[str] = []
    for error in exc.errors():
        line = f"{_format_loc(error['loc'])}: {_message(error)}"
        if line not in lines:
            lines.append(line)
    return lines
