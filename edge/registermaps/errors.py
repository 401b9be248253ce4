"""Register map errors; their problems are ``path.to.field: message`` lines (``edge.tables``)."""

from __future__ import annotations

from collections.abc import Sequence

from edge.errors import EdgeError

__all__ = ["MissingMetricsError", "RegisterMapError"]


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
