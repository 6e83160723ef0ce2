"""The errors smsops raises. Every refusal is an :class:`SmsopsError` with one clear line.

Front doors print ``smsops.refusals.human(error)`` (the line in the reader's language,
#15; ``str`` of the error stays English) and exit 1; nothing below them prints or exits.
Each error has a ``code`` (the ``"error"`` of a ``--json`` document) and says whether it is
``transient``: whether the same work, tried again later with nothing changed, may
succeed. Prefect retries only transient ones (``flows/campaigns.py``).

The tree (``code``; ``*`` transient)::

    SmsopsError                 error            base; never raised itself
    ├── RuleError               rule             a business rule (R1–R16) refuses
    │   ├── PlanError           plan
    │   ├── MessageError        message
    │   ├── TicketError         tickets
    │   ├── ScheduleError       schedule
    │   └── NoRecipientsError   no_recipients
    ├── InputError              input            bad input data: source, problems
    │   └── QueryError          input            a --query outside the language
    ├── PathError               path             a file outside SMSOPS_IMPORT_ROOT
    ├── NotFoundError           not_found
    ├── StateError              state            e.g. cancel a sent delivery, a lost claim
    ├── ConfigError             config           an SMSOPS_* setting smsops cannot use
    ├── StoreError              store            the store cannot be opened or migrated
    │   └── StoreUnavailable    store          * the database is away or locked
    ├── GatewayError            gateway          the gateway failed as a whole (disk full)
    ├── ServerError             server           a server smsops runs could not start
    ├── ReportRefused           dlr_refused      a delivery report not ours to record
    ├── ReportError             report           the report notebook could not run
    └── DeliveryFailed          delivery_failed  not one message of a delivery went out

Outside the tree, never reaching a user: :class:`BatchFailed` (a ``RuntimeError``; the
receiver answers it with a 5xx so that Kannel sends the report again),
:class:`ServeStopped` (a stop signal while ``smsops serve`` starts) and
:class:`Unstreamable` (a users file the streamed import leaves to the whole-file reader).

Every error pickles to the same type, line and attributes (``__reduce__``, as dlt's
``DltException`` does), so it survives Prefect result persistence and process pools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from smsops.i18n import N_
from smsops.logs import mask_text


class Text(str):
    """An English line that keeps its template and values (#15): ``str`` of it is the
    English line, which ``--json``, Prefect states and logs keep; :meth:`render` is the
    line in the reader's language, ``_(template).format(**values)``, numbers written as
    the reader writes them. Mark the template with ``N_()`` where it is written, so that
    the catalog has it::

        raise ConfigError(Text(N_("unknown gateway {name}"), name=repr(name)))

    A value may be a Text itself (rendered too); :meth:`joined` puts several together.
    """

    template: str
    params: dict[str, object]
    parts: tuple[Text, ...]
    sep: str

    def __new__(cls, template: str, /, **params: object) -> Text:
        self = super().__new__(cls, template.format(**params))
        self.template, self.params, self.parts, self.sep = template, params, (), ""
        return self

    @classmethod
    def joined(cls, parts: Sequence[Text], sep: str = "; ") -> Text:
        """``parts`` as one line, ``sep`` between them (``; `` is ``。`` in Japanese)."""
        self = super().__new__(cls, sep.join(parts))
        self.template, self.params, self.parts, self.sep = "", {}, tuple(parts), sep
        return self

    def render(self) -> str:
        """The line in the reader's language (English: the line itself)."""
        from smsops.i18n import _, language, number

        if language() == "en":
            return str(self)
        if self.parts:
            sep = _JOINS.get(self.sep, self.sep)
            return sep.join(part.render() for part in self.parts)

        def value(v: object) -> object:
            if isinstance(v, Text):
                return v.render()
            return number(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

        return _(self.template).format(**{k: value(v) for k, v in self.params.items()})

    def __reduce__(self) -> tuple[Any, ...]:
        return (_text, (self.template, self.params, self.parts, self.sep))


_JOINS = {"; ": "。", ", ": "、", ": ": "："}  # how Japanese joins clauses

# The reasons the OS gives for a file smsops cannot make, open or write, as catalog entries:
# errno's own English (strerror) is what --json and logs keep.
OS_REASONS: tuple[str, ...] = (
    N_("No such file or directory"),
    N_("Permission denied"),
    N_("File exists"),
    N_("Not a directory"),
    N_("Is a directory"),
    N_("No space left on device"),
    N_("File too large"),
    N_("Read-only file system"),
    N_("Disk quota exceeded"),
)


def os_reason(exc: OSError) -> str:
    """Why the OS refused, as its English reason; a :class:`Text` (translated when shown)
    when the catalog has it."""
    reason = exc.strerror or str(exc)
    return Text(reason) if reason in OS_REASONS else reason


def _text(template: str, params: dict[str, object], parts: tuple[Text, ...], sep: str) -> Text:
    return Text.joined(parts, sep) if parts else Text(template, **params)


class SmsopsError(Exception):
    """Base of every refusal smsops explains to its user."""

    #: machine-readable kind, e.g. ``"plan"``, ``"tickets"``; shown in ``--json`` errors
    code: ClassVar[str] = "error"
    #: True: the same work, tried again later with nothing changed, may succeed
    transient: ClassVar[bool] = False

    def __init__(self, message: str, **details: object) -> None:
        # the template and values of a line raised as a Text (#15), for refusals.human()
        self.text = message if isinstance(message, Text) else None
        # Errors travel far (stderr, Prefect states and logs, notebooks): a phone number
        # in one, say the value a user typed, is masked here, once for every front door.
        message = mask_text(str(message))
        super().__init__(message)
        self.message = message
        self.details = {k: mask_text(v) if isinstance(v, str) else v for k, v in details.items()}

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.details}

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduce calls ``type(self)(*self.args)``, which the subclasses'
        # signatures refuse; rebuild without __init__ and put every attribute back.
        return (_restore, (type(self), self.args), self.__dict__)


def _restore(cls: type[SmsopsError], args: tuple[object, ...]) -> SmsopsError:
    return cls.__new__(cls, *args)


def is_transient(error: BaseException) -> bool:
    """Whether trying again later, with nothing changed, may cure ``error``: an
    :class:`SmsopsError` says so itself; from outside smsops only a timeout or a lost
    connection may pass (a bug, say a ``KeyError``, never does)."""
    if isinstance(error, SmsopsError):
        return error.transient
    return isinstance(error, TimeoutError | ConnectionError)


# --- refused by a rule ------------------------------------------------------------------


class RuleError(SmsopsError):
    """A business rule (R1–R16) refuses the operation; ``rule`` names it."""

    code = "rule"

    def __init__(self, rule: str, message: str, **details: object) -> None:
        super().__init__(f"{rule}: {message}", rule=rule, **details)
        self.rule = rule
        self.text = message if isinstance(message, Text) else None


class PlanError(RuleError):
    """The account's plan does not allow bulk SMS (R1)."""

    code = "plan"


class MessageError(RuleError):
    """A message breaks a rule of texts (R6, R7): empty, too long, too many."""

    code = "message"


class TicketError(RuleError):
    """The balance is below what the delivery needs (R9)."""

    code = "tickets"


class ScheduleError(RuleError):
    """A send time that cannot be used (R12): empty, unreadable, past, ambiguous."""

    code = "schedule"


class NoRecipientsError(RuleError):
    """Nobody is left to send to (R4 says why)."""

    code = "no_recipients"


# --- refused input ----------------------------------------------------------------------


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
                {"row": p.row, "column": p.column, "problem": mask_text(p.text)} for p in problems
            ],
        )
        self.source = source
        self.problems = problems
        self.limit = limit


class QueryError(InputError):
    """A ``--query`` that is not in the selection language; names the part refused."""

    def __init__(self, problem: str) -> None:
        super().__init__("--query", [Problem(None, None, problem)])
        self.problem = problem


class PathError(SmsopsError):
    """A flow was asked to read a file outside ``SMSOPS_IMPORT_ROOT``; nothing was read."""

    code = "path"


# --- the object asked for ---------------------------------------------------------------


class NotFoundError(SmsopsError):
    """What was asked for does not exist: a delivery, a message, a number."""

    code = "not_found"


class StateError(SmsopsError):
    """The object is not in a state that allows the operation (e.g. cancel a sent one)."""

    code = "state"


# --- the installation: settings, store, gateway, servers --------------------------------


class ConfigError(SmsopsError):
    """An ``SMSOPS_*`` setting has a value smsops cannot use."""

    code = "config"


class StoreError(SmsopsError):
    """The store cannot be opened: not a database URL, or a schema this smsops cannot
    handle."""

    code = "store"


class StoreUnavailable(StoreError):
    """The database cannot be reached or is locked past the busy timeout: nothing of the
    transaction was recorded, and the work can be resumed once it is back."""

    transient = True


class GatewayError(SmsopsError):
    """The SMS gateway failed as a whole, not one message (say the outbox's disk is full):
    the delivery stops until someone acts, and ``dispatch-due`` resumes it. Not transient:
    a gateway that is only unreachable raises nothing; its delivery pauses instead."""

    code = "gateway"


class ServerError(SmsopsError):
    """A server smsops runs (the delivery-report receiver, a local Prefect API) could not
    start: its port is taken, or it exited."""

    code = "server"


# --- reports and deliveries -------------------------------------------------------------


class ReportRefused(SmsopsError):
    """A delivery report that is not this installation's to record: another
    installation's, or another message's (its ``ref`` is not the one recorded)."""

    code = "dlr_refused"


class ReportError(SmsopsError):
    """The report notebook could not be run or exported."""

    code = "report"


class DeliveryFailed(SmsopsError):
    """Not one message of the delivery went out: its flow run fails, naming the reasons."""

    code = "delivery_failed"


def _delivery_failed(message: str, details: dict[str, object]) -> DeliveryFailed:
    # Prefect results pickled before every error had __reduce__ name this function.
    return DeliveryFailed(message, **details)


class BatchFailed(RuntimeError):
    """The transaction that held a delivery report failed: nothing of its batch was
    recorded, and the caller answers so that the report is sent again (a 5xx). Not an
    :class:`SmsopsError`: it never reaches a user, only the receiver's answer."""

    def __init__(self, message: str, *, unavailable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.unavailable = unavailable  # the store is locked or away (503), not a bug (500)


class ServeStopped(Exception):
    """A stop signal (SIGTERM, Ctrl-C) came before ``smsops serve``'s runner was serving:
    serve unwinds what it started and exits 0. Not an :class:`SmsopsError`: it never
    reaches a user."""


class Unstreamable(Exception):
    """A users file the streamed import leaves to the whole-file reader (#12): it has a
    problem to name exactly, or a shape only the whole table shows. Not an
    :class:`SmsopsError`: it never reaches a user; the import then reads the file whole,
    which raises the :class:`InputError` naming every problem."""
