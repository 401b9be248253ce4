"""Strict models of TOML tables, whose every problem reads ``path.to.field: message``.

The gateway config file and register map files share this: unknown fields are refused,
rules that span several fields report at the field they blame (not at the table), and
pydantic's messages are turned into lines an operator can act on. List indexes show as
``[i]``: ``devices[2].poll_interval_s: must be greater than 0``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, Self, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

__all__ = [
    "RULE",
    "Loc",
    "StrictTable",
    "format_loc",
    "format_problems",
    "plain_message",
    "rule_error",
]

Loc: TypeAlias = tuple[str | int, ...]
#: Error type of a cross-field rule; its message is final and never rewritten.
RULE: Final = "table_rule"

_SHOULD = re.compile(r"^(Input|String|List|Tuple|Dictionary|Value|Object) should (be|have|match) ")


def rule_error(loc: Loc, message: str, value: object) -> InitErrorDetails:
    # The message goes through ctx so braces in it are never read as a template.
    return InitErrorDetails(
        type=PydanticCustomError(RULE, "{message}", {"message": message}),
        loc=loc,
        input=value,
    )


class StrictTable(BaseModel):
    """A table of a file. Override ``_rule_problems`` for rules spanning fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _apply_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        model = handler(data)
        problems = model._rule_problems()
        if problems:
            # Raised as a ValidationError so each problem keeps its own location, which
            # pydantic then prefixes with the table's place in the file.
            raise ValidationError.from_exception_data(
                cls.__name__,
                [rule_error(loc, message, value) for loc, message, value in problems],
            )
        return model

    def _rule_problems(self) -> list[tuple[Loc, str, object]]:
        return []


def format_loc(loc: Loc) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":  # pydantic's marker for an error in a dict key
            text += f".{part}" if text else part
    return text or "(top level)"


def plain_message(error: ErrorDetails) -> str:
    """pydantic's message in the words the file's reader needs."""
    kind = error["type"]
    message = error["msg"]
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    if kind == RULE:
        return message
    return _SHOULD.sub(r"must \2 ", message)


def _plain(error: ErrorDetails) -> tuple[Loc, str]:
    return tuple(error["loc"]), plain_message(error)


def format_problems(
    exc: ValidationError, describe: Callable[[ErrorDetails], tuple[Loc, str]] = _plain
) -> list[str]:
    """One ``path.to.field: message`` line per problem, in file order, without duplicates."""
    lines: list[str] = []
    for error in exc.errors():
        loc, message = describe(error)
        line = f"{format_loc(loc)}: {message}"
        if line not in lines:
            lines.append(line)
    return lines
