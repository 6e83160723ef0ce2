"""Prefect flows over the smsops services: thin, batched, with artifacts.

Flows read parameters, call services, emit artifacts. Tasks handle chunks (thousands of
pairs), never one message; retries live on the gateway task, only for errors a retry can
cure (``transient_only``), and each retry first settles what the previous attempt handed
to the gateway, so nothing is sent twice.
Settings come from ``SMSOPS_*`` variables of the process running the flow — never from
parameters, so no credential ever shows in the Prefect UI.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, cast

from prefect import Task, flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType, TaskRun
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed, State
from prefect.tasks import exponential_backoff
from pydantic import SecretStr

from smsops import i18n
from smsops.domain.vocabulary import DeliveryStatus
from smsops.errors import (
    DeliveryFailed,
    InputError,
    PathError,
    Problem,
    StateError,
    is_transient,
)
from smsops.i18n import _
from smsops.logs import install_masking, mask_text
from smsops.refusals import localize
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import dispatch as dispatching
from smsops.services import drops, estimates, inbound, people
from smsops.services.context import Context
from smsops.services.import_root import confine
from smsops.settings import Settings

_contexts: dict[str, Context] = {}


def _context() -> Context:
    """The Context for the settings of this process, one per distinct settings.

    Built from the Settings object itself, never from a dump of it: a JSON dump masks
    every SecretStr ("**********"), and a Context rebuilt from it would send that to
    Kannel as the password."""
    settings = Settings()
    key = _fingerprint(settings)
    if key not in _contexts:
        install_masking()
        _contexts[key] = Context.open(settings)
    return _contexts[key]


def _fingerprint(settings: Settings) -> str:
    """A digest of every setting, secret values included (a changed password is other
    settings), that keeps no secret in memory as the key."""

    def reveal(value: object) -> object:
        return value.get_secret_value() if isinstance(value, SecretStr) else str(value)

    dumped = json.dumps(settings.model_dump(), sort_keys=True, default=reveal)
    return hashlib.sha256(dumped.encode("utf-8")).hexdigest()


def _markdown_cell(value: object) -> str:
    """A value that stays in its cell: a message text's ``|`` or line break would end it."""
    return str(value).replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>")


def _markdown_table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {_markdown_cell(key)} | {_markdown_cell(value)} |" for key, value in rows.items()]
    return "\n".join(lines)


def _reader_language(ctx: Context) -> None:
    """Artifacts speak the language of whoever reads the Prefect UI (#15): SMSOPS_LANG or
    the locale of the process running the flow, else the account's language. Statuses,
    reasons, table columns, state messages and logs stay English."""
    if not i18n.chosen_by_environment():
        i18n.set_account_default(accounts.get_account(ctx).language)


# --- import -------------------------------------------------------------------------


@task(cache_policy=NO_CACHE)
def import_files(paths: list[str], encoding: str) -> dict[str, int]:
    return people.import_users(_context(), paths, encoding=encoding).to_dict()


def _confined(paths: list[str] | None) -> list[str]:
    """The files a flow may read: each under SMSOPS_IMPORT_ROOT, checked before opening."""
    return [str(p) for p in confine(paths or [], _context().settings.import_root)]


def _reject(source: str, problems: list[Problem]) -> None:
    """The rejected-rows artifact: where each problem is and the masked cell at fault,
    never other file content (such as the header line a wrong file starts with)."""
    _reader_language(_context())
    create_table_artifact(
        key="import-rejected-rows",
        table=[p.shareable() for p in problems[:1000]],
        description=_("Rejected: {source} (nothing was imported)").format(source=source),
    )


@flow(name="import-users", log_prints=False)
def import_users(paths: list[str], encoding: str = "auto") -> dict[str, int]:
    """Import a batch of user CSV files (under SMSOPS_IMPORT_ROOT), all or nothing; report
    rejected rows."""
    logger = get_run_logger()
    try:
        result = import_files(_confined(paths), encoding)
    except PathError as exc:  # refused before any file was opened
        _reject("paths", [Problem(None, None, exc.message)])
        logger.error("import refused: %s", exc.message)
        raise
    except InputError as exc:
        _reject(exc.source, exc.problems)
        logger.error("import refused: %s", exc.message)
        raise
    _reader_language(_context())
    create_markdown_artifact(
        key="import-summary",
        markdown=_("## User import")
        + "\n\n"
        + _markdown_table(
            {
                _("files"): ", ".join(paths),
                _("rows imported"): result["rows"],
                _("users in total"): result["users_total"],
            }
        ),
    )
    logger.info("imported %s rows; %s users in total", result["rows"], result["users_total"])
    return result


# --- the drop folder (#11) ------------------------------------------------------------

_looks: dict[str, drops.Looks] = {}  # per folder: what the last run of this process saw


def _drop_folder(folder: str | None) -> tuple[str, bool]:
    """The folder a run may watch, and whether it is the configured one (created when
    missing): SMSOPS_DROPS by default; another local folder only under
    SMSOPS_IMPORT_ROOT; a URL only the configured one (parameters come from anyone who
    reaches the Prefect API)."""
    settings = _context().settings
    if folder is None or folder == settings.drops:
        return settings.drops, True
    if "://" in folder:
        raise PathError(
            f"{mask_text(repr(folder))}: a run watches only the configured drop folder "
            f"{settings.drops!r} (SMSOPS_DROPS) or a folder under the import root"
        )
    return str(confine([folder], settings.import_root)[0]), False


@flow(name="import-drops", log_prints=False)
def import_drops(
    folder: str | None = None, mode: drops.Mode = "upsert", encoding: str = "auto"
) -> dict[str, Any]:
    """One pass over the drop folder (SMSOPS_DROPS): each whole file imported all or
    nothing and moved to processed/ or rejected/ (beside NAME.errors.csv, and an artifact
    with the same rows); the run succeeds even when a file is rejected."""
    logger = get_run_logger()
    path, configured = _drop_folder(folder)
    done = drops.watch(
        _context(), path, mode=mode, encoding=encoding, previous=_looks.get(path), create=configured
    )
    _looks[path] = done.looks
    _reader_language(_context())
    for f in done.files:
        logger.info("%s: %s", f.name, f.detail)
        if f.problems:
            create_table_artifact(
                key="drop-rejected-rows",
                table=f.problems[:1000],
                description=_("Rejected: {name} (nothing was imported), see {errors}").format(
                    name=f.name, errors=f.errors_csv
                ),
            )
    create_table_artifact(
        key="drop-folder-pass",
        table=[f.to_dict() for f in done.files],
        description=_("Drop folder, mode {mode}: {summary}").format(
            mode=mode, summary=done.human_summary()
        ),
    )
    logger.info("drop folder: %s", done.summary())
    return done.to_dict()


# --- preview and create (R13) -------------------------------------------------------


def _confirmation_artifacts(ctx: Context, preview: dl.Preview) -> None:
    """R13 as artifacts: counts, texts, tickets, exclusions, and masked sample numbers."""
    d = preview.to_dict()
    _reader_language(ctx)  # as every artifact (#15); the table's numbers stay plain
    texts = "\n".join(
        "- "
        + _("message {number}").format(number=t["message_no"])
        + f" ({t['length']}/70): {t['text']}"
        for t in d["texts"]
    )
    create_markdown_artifact(
        key="bulk-confirmation",
        markdown=(
            _("## Bulk delivery confirmation")
            + "\n\n"
            + _markdown_table(
                {
                    _("recipients"): d["recipients"],
                    _("send at"): (
                        i18n.when(preview.scheduled_at, preview.timezone)
                        if preview.scheduled_at
                        else _("now")
                    ),
                    _("tickets needed"): d["tickets_needed"],
                    _("balance"): d["balance"],
                    _("shortfall"): d["shortfall"],
                    **_completion_rows(preview),
                }
            )
            + "\n\n### "
            + _("Messages")
            + f"\n{texts}\n\n### "
            + _("Selection")
            + f"\n{localize(d['diagnosis'])}\n"
        ),
    )
    create_table_artifact(
        key="bulk-recipients-sample",
        table=[{"seq": i + 1, "phone": phone} for i, phone in enumerate(d["sample"])],
        description=_("First recipients (masked)"),
    )


def _completion_rows(preview: dl.Preview) -> dict[str, str]:
    """When the last message leaves at the rate cap, and the warnings (#11)."""
    c = preview.completion
    if c is None:
        return {}
    rows = {_("last message leaves"): estimates.last_message(c, preview.timezone)}
    if c.warnings:
        rows[_("warnings")] = "; ".join(estimates.warning_lines(c)).replace("|", "/")
    return rows


@flow(name="preview-bulk")
def preview_bulk(
    messages: list[str],
    at: str | None = None,
    users_files: list[str] | None = None,
    query: str | None = None,
) -> dict[str, Any]:
    """Show what a bulk delivery would do (R13) without saving anything."""
    ctx = _context()
    preview = dl.preview_bulk(ctx, messages, at=at, users_files=_confined(users_files), query=query)
    _confirmation_artifacts(ctx, preview)
    return preview.to_dict()


@flow(name="create-bulk")
def create_bulk(
    messages: list[str],
    at: str | None = None,
    users_files: list[str] | None = None,
    query: str | None = None,
    confirm: bool = False,
    outside_window: bool = False,
) -> dict[str, Any] | State[dict[str, Any]]:
    """Preview, and only with ``confirm=True`` save the delivery; send it now unless
    ``at`` is given (then ``dispatch-due`` sends it at its time). ``outside_window``: sent
    even outside the account's sending window (#11), on purpose. The run fails when the
    delivery does, and its state message says how a partial send went."""
    ctx = _context()
    preview = dl.preview_bulk(ctx, messages, at=at, users_files=_confined(users_files), query=query)
    _confirmation_artifacts(ctx, preview)
    if not confirm:
        get_run_logger().info("not confirmed: nothing saved (run again with confirm=true)")
        return {**preview.to_dict(), "delivery_id": None}
    created = dl.create_bulk(ctx, preview, outside_window=outside_window)
    if not created.sends_now:
        return created.to_dict()
    return _sent_now(created.to_dict(), created.delivery_id)  # R12: now, as a subflow


def _sent_now(result: dict[str, Any], delivery_id: int) -> State[dict[str, Any]]:
    """Dispatch ``delivery_id`` as a subflow and end the calling flow as it ended: its
    DeliveryFailed is raised again, its state message kept."""
    state = dispatch_delivery(delivery_id, return_state=True)
    sent = cast(dict[str, Any], state.result())  # raises DeliveryFailed when it failed
    return Completed(message=state.message, data={**result, **sent})


# --- dispatch -----------------------------------------------------------------------


@task(cache_policy=NO_CACHE)
def claim(delivery_id: int, skip_if_taken: bool, join: bool) -> dispatching.Claim | str:
    """Claim the delivery; with ``skip_if_taken`` a delivery another process is sending
    (or already sent) is a reason to skip, not a failure."""
    try:
        return dispatching.begin(_context(), delivery_id, join=join)
    except StateError as exc:
        if skip_if_taken:
            return exc.message
        raise


def transient_only(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """A ``retry_condition_fn``: retry only what a retry can cure (a database away or
    locked, a lost answer; :func:`smsops.errors.is_transient`), never a refusal such as a
    claim lost to another dispatcher, which fails the run at once."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


@task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=transient_only,
    cache_policy=NO_CACHE,
)
def send_chunk(held: dispatching.Claim) -> int:
    """One chunk through the gateway. Retried with backoff on transient failures only; the
    retry first settles the previous attempt (idempotency keys), so none is sent twice."""
    ctx = _context()
    gateway = ctx.gateway()
    try:
        return dispatching.send_chunk(ctx, held, gateway)
    finally:
        gateway.close()


@task(cache_policy=NO_CACHE)
def wrap_up(held: dispatching.Claim) -> dict[str, Any]:
    return dispatching.finish(_context(), held).to_dict()


def errors_by_reason(ctx: Context, delivery_id: int) -> dict[str, int]:
    """How many (number, message) pairs of the delivery failed, per error reason, most
    first (a gateway's reason text is masked: it may quote a number)."""
    failed = dl.delivery_items(ctx, delivery_id, failed_only=True)
    counts = failed["error"].fillna("unknown").astype(str).map(mask_text).value_counts()
    return {
        str(reason): int(n) for reason, n in sorted(counts.items(), key=lambda x: (-x[1], x[0]))
    }


def _outcome(result: dict[str, Any], reasons: dict[str, int]) -> str:
    """One line for the run's state: ``delivery 7 partially_sent: sent 15, errors 5
    (insufficient_tickets: 5)``."""
    why = ", ".join(f"{reason}: {n}" for reason, n in reasons.items())
    return (
        f"delivery {result['delivery_id']} {result['status']}: sent {result['sent']}, "
        f"errors {result['errors']}" + (f" ({why})" if why else "")
    )


def _summary_artifact(ctx: Context, delivery_id: int, status: str, reasons: dict[str, int]) -> None:
    """The delivery's summary in the reader's language; its status, kind and error
    reasons as they are stored."""
    _reader_language(ctx)
    summary = dl.delivery_summary(ctx, delivery_id).human()  # as `deliveries show` says it
    errors = ""
    if reasons:
        errors = (
            "\n\n### "
            + _("Errors by reason")
            + f"\n\n| {_('reason')} | {_('count')} |\n| --- | --- |\n"
            + "\n".join(f"| {reason.replace('|', '/')} | {n} |" for reason, n in reasons.items())
        )
    create_markdown_artifact(
        key=f"delivery-{delivery_id}-summary",
        markdown=(
            "## "
            + _("Delivery {id}: {status}").format(id=delivery_id, status=status)
            + "\n\n"
            + _markdown_table(summary)
            + errors
            + "\n\n"
            + _("Balance after: {tickets}").format(tickets=i18n.tickets(accounts.balance(ctx)))
            + "\n"
        ),
    )


@flow(name="dispatch-delivery")
def dispatch_delivery(
    delivery_id: int, skip_if_taken: bool = False, join: bool = False
) -> State[dict[str, Any]]:
    """Send one delivery chunk by chunk, then publish its summary. With ``join``, work
    beside the workers already sending it (each takes different chunks).

    The run tells the truth: a ``failed`` delivery fails it (DeliveryFailed, reasons in
    the state message); a ``partially_sent`` one completes with a message that says so."""
    ctx = _context()
    held = claim(delivery_id, skip_if_taken, join)
    if isinstance(held, str):
        get_run_logger().info("skipped delivery %s: %s", delivery_id, held)
        skipped = {"delivery_id": delivery_id, "skipped": held}
        return Completed(message=f"skipped delivery {delivery_id}: {held}", data=skipped)
    dispatching.drive(ctx, held, send_chunk)  # each chunk a task run, retried alone
    result = wrap_up(held)
    reasons = errors_by_reason(ctx, delivery_id) if result["errors"] else {}
    _summary_artifact(ctx, delivery_id, result["status"], reasons)
    outcome = _outcome(result, reasons)
    if result["status"] == DeliveryStatus.FAILED:
        get_run_logger().error("%s", outcome)
        raise DeliveryFailed(outcome, **result, errors_by_reason=reasons)
    get_run_logger().info("%s", outcome)
    return Completed(message=outcome, data=result)


@flow(name="dispatch-due")
def dispatch_due() -> State[list[dict[str, Any]]]:
    """Send every delivery whose time has come; resume any whose process died.

    Run by a deployment, it first cancels the other overdue runs of that deployment
    (a backlog left while nothing served it): this run does their work. The run fails
    when a delivery it sent failed; the others are sent all the same."""
    _collapse_overdue_runs()
    states = [
        (delivery_id, dispatch_delivery(delivery_id, skip_if_taken=True, return_state=True))
        for delivery_id in dispatching.due_ids(_context())
    ]
    results = [s.result(raise_on_failure=False) for _, s in states]
    done = [r for r in results if isinstance(r, dict) and "skipped" not in r]
    failed = [s.message or f"delivery {d} failed" for d, s in states if s.is_failed()]
    notes = [s.message for _, s in states if s.message and "partially_sent" in s.message]
    _replies_artifact(_context())
    if failed:
        message = "; ".join(m.split(": ", 1)[-1] if "DeliveryFailed" in m else m for m in failed)
        raise DeliveryFailed(message, deliveries=done)
    return Completed(message="; ".join(notes) or f"{len(done)} deliveries sent", data=done)


REVIEW_ROWS = 100  # the newest replies to review shown (all of them: smsops replies list)


def _replies_artifact(ctx: Context) -> int:
    """The ``replies-to-review`` table: replies that may be a refusal (R16) and wait for a
    person, newest first, senders and texts masked. Published only when there are any;
    returns how many there are."""
    review = inbound.list_replies(ctx, action="review")
    if review:
        rows = [
            {
                "reply": r.id,
                "received": r.received_at,
                "sender": r.sender,
                "text": r.text,
                "why": r.reason,
            }
            for r in review[:REVIEW_ROWS]
        ]
        _reader_language(ctx)
        more = ""
        if len(review) > REVIEW_ROWS:
            more = _("; the newest {n} shown").format(n=i18n.number(REVIEW_ROWS))
        said = i18n.ngettext(
            "{n} reply may be a refusal (R16){more}: read it, and `smsops optout add NUMBER` "
            "if it is one (`smsops replies list --action review`).",
            "{n} replies may be a refusal (R16){more}: read them, and `smsops optout add "
            "NUMBER` the ones that are (`smsops replies list --action review`).",
            len(review),
        )
        create_table_artifact(
            key="replies-to-review",
            table=rows,
            description=said.format(n=i18n.number(len(review)), more=more),
        )
    return len(review)


def _collapse_overdue_runs() -> int:
    """Cancel the other runs of this flow run's deployment whose time has already come:
    after an outage Prefect keeps one late run per missed interval, and one run sending
    every due delivery does all of their work. Returns how many were cancelled."""
    run_ctx = FlowRunContext.get()
    run = run_ctx.flow_run if run_ctx else None
    if run is None or run.deployment_id is None:
        return 0
    overdue = FlowRunFilter(
        id=FlowRunFilterId(not_any_=[run.id]),
        deployment_id=FlowRunFilterDeploymentId(any_=[run.deployment_id]),
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
        expected_start_time=FlowRunFilterExpectedStartTime(before_=datetime.now(UTC)),
    )
    cancelled = 0
    tried: set[Any] = set()
    with get_client(sync_client=True) as client:
        # a page at a time (the API gives at most 200): cancelled runs leave the filter
        while late := [
            r
            for r in client.read_flow_runs(flow_run_filter=overdue, limit=200)
            if r.id not in tried
        ]:
            tried.update(r.id for r in late)
            for other in late:
                client.set_flow_run_state(
                    other.id, Cancelled(message=f"collapsed into run {run.name}"), force=True
                )
            cancelled += len(late)
    if cancelled:
        get_run_logger().info("collapsed %d overdue runs into this one", cancelled)
    return cancelled


@flow(name="resend-failures")
def resend_failures(
    delivery_id: int, at: str | None = None, outside_window: bool = False
) -> dict[str, Any] | State[dict[str, Any]]:
    """R15: a new delivery of exactly the failed pairs of ``delivery_id``;
    ``outside_window``: sent even while the sending window is shut (#11), on purpose."""
    created = dl.resend_bulk(_context(), delivery_id, at=at, outside_window=outside_window)
    result = {**created.to_dict(), "resend_of": delivery_id}
    if not created.sends_now:
        return result
    return _sent_now(result, created.delivery_id)
