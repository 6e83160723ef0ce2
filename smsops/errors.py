"""The errors smsops raises. Every refusal is an :class:`SmsopsError` with one clear line.

Front doors print ``str(error)`` and exit 1; nothing below them prints or exits.
"""

from __future__ import annotations

from dataclasses import dataclass

from smsops.logs import mask_text


class SmsopsError(Exception):
    """Base of every refusal smsops explains to its user."""

    #: machine-readable kind, e.g. ``"plan"``, ``"tickets"``; shown in ``--json`` errors
    code = "error"

    def __init__(self, message: str, **details: object) -> None:
        # Errors travel far (stderr, Prefect states and logs, notebooks): a phone number
        # in one, say the value a user typed, is masked here, once for every front door.
        message = mask_text(message)
        super().__init__(message)
        self.message = message
        self.details = {k: mask_text(v) if isinstance(v, str) else v for k, v in details.items()}

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.details}


class RuleError(SmsopsError):
    """A business rule (R1–R16) refuses the operation; ``rule`` names it."""

    code = "rule"

    def __init__(self, rule: str, message: str, **details: object) -> None:
        super().__init__(f"{rule}: {message}", rule=rule, **details)
        self.rule = rule


class PlanError(RuleError):
    code = "plan"


class MessageError(RuleError):
    code = "message"


class TicketError(RuleError):
    code = "tickets"


class ScheduleError(RuleError):
    code = "schedule"


class NoRecipientsError(RuleError):
    code = "no_recipients"


@dataclass(frozen=True)
class Problem:
    """One bad cell of an input table: where it is and what is wrong."""

    row: int | None  # 1-based data row (the header is row 0), None for the whole table
    column: str | None
    problem: str
    value: object = None
    # what the file holds beyond the cell at fault (say the header names found): shown to
    # whoever reads their own file, never put in a shared artifact (see `shareable`)
    content: str | None = None

    @property
    def text(self) -> str:
        """The problem, with the file content that explains it."""
        return f"{self.problem} ({self.content})" if self.content else self.problem

    def shareable(self) -> dict[str, object]:
        """Where and what, without file content: for Prefect artifacts and other shared
        views (phone numbers masked)."""
        return {"row": self.row, "column": self.column, "problem": mask_text(self.problem)}

    def __str__(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        return f"{', '.join(where) or 'table'}: {self.text}"


class InputError(SmsopsError):
    """Bad input data: names the source and each problem (row, column, what)."""

    code = "input"

    def __init__(self, source: str, problems: list[Problem], limit: int = 5) -> None:
        shown = "; ".join(str(p) for p in problems[:limit])
        more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
        if len(problems) == 1 and problems[0].row is None and problems[0].column is None:
            message = f"{source}: {problems[0].text}"  # one problem, not of a table cell
        else:
            count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
            message = f"{source}: {count}: {shown}{more}"
        super().__init__(
            message,
            source=source,
            problems=[
                {"row": p.row, "column": p.column, "problem": mask_text(p.text)}
                for p in problems
            ],
        )
        self.source = source
        self.problems = problems


class NotFoundError(SmsopsError):
    code = "not_found"


class StateError(SmsopsError):
    """The object is not in a state that allows the operation (e.g. cancel a sent one)."""

    code = "state"


class GatewayError(SmsopsError):
    """The SMS gateway failed in a way that is not one message's fault."""

    code = "gateway"


class DeliveryFailed(SmsopsError):
    """Not one message of the delivery went out: its flow run fails, naming the reasons."""

    code = "delivery_failed"

    def __reduce__(self) -> tuple[object, ...]:
        return (_delivery_failed, (self.message, self.details))


def _delivery_failed(message: str, details: dict[str, object]) -> DeliveryFailed:
    return DeliveryFailed(message, **details)


class PathError(SmsopsError):
    """A flow was asked to read a file outside ``SMSOPS_IMPORT_ROOT``; nothing was read."""

    code = "path"


class ConfigError(SmsopsError):
    """An ``SMSOPS_*`` setting has a value smsops cannot use."""

    code = "config"
