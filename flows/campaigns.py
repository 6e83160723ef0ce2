"""Prefect flows over the smsops services: thin, batched, with artifacts.

Flows read parameters, call services, emit artifacts. Tasks handle chunks (thousands of
pairs), never one message; retries live on the gateway task, and each retry first
settles what the previous attempt handed to the gateway, so nothing is sent twice.
Settings come from ``SMSOPS_*`` variables of the process running the flow — never from
parameters, so no credential ever shows in the Prefect UI.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from smsops.errors import InputError, PathError, Problem, StateError
from smsops.logs import install_masking, mask_text
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import dispatch as dispatching
from smsops.services import people
from smsops.services.context import Context
from smsops.services.import_root import confine
from smsops.settings import Settings


def _context() -> Context:
    """The Context for the settings of this process (cached per distinct settings)."""
    return _context_for(Settings().model_dump_json())


@cache
def _context_for(settings_json: str) -> Context:
    install_masking()
    return Context.open(Settings.model_validate_json(settings_json))


def _markdown_table(rows: dict[str, Any]) -> str:
    lines = ["| | |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in rows.items()]
    return "\n".join(lines)


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
    rows = [
        {"row": p.row, "column": p.column, "problem": mask_text(p.problem.split(" (found:")[0])}
        for p in problems[:1000]
    ]
    create_table_artifact(
        key="import-rejected-rows",
        table=rows,
        description=f"Rejected: {source} (nothing was imported)",
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
    create_markdown_artifact(
        key="import-summary",
        markdown="## User import\n\n"
        + _markdown_table(
            {
                "files": ", ".join(paths),
                "rows imported": result["rows"],
                "users in total": result["users_total"],
            }
        ),
    )
    logger.info("imported %s rows; %s users in total", result["rows"], result["users_total"])
    return result


# --- preview and create (R13) -------------------------------------------------------


def _confirmation_artifacts(preview: dl.Preview) -> None:
    """R13 as artifacts: counts, texts, tickets, exclusions, and masked sample numbers."""
    d = preview.to_dict()
    texts = "\n".join(
        f"- message {t['message_no']} ({t['length']}/70): {t['text']}" for t in d["texts"]
    )
    create_markdown_artifact(
        key="bulk-confirmation",
        markdown=(
            "## Bulk delivery confirmation\n\n"
            + _markdown_table(
                {
                    "recipients": d["recipients"],
                    "send at": d["scheduled_at"] or "now",
                    "tickets needed": d["tickets_needed"],
                    "balance": d["balance"],
                    "shortfall": d["shortfall"],
                }
            )
            + f"\n\n### Messages\n{texts}\n\n### Selection\n{d['diagnosis']}\n"
        ),
    )
    create_table_artifact(
        key="bulk-recipients-sample",
        table=[{"seq": i + 1, "phone": phone} for i, phone in enumerate(d["sample"])],
        description="First recipients (masked)",
    )


@flow(name="preview-bulk")
def preview_bulk(
    messages: list[str],
    at: str | None = None,
    users_files: list[str] | None = None,
    query: str | None = None,
) -> dict[str, Any]:
    """Show what a bulk delivery would do (R13) without saving anything."""
    preview = dl.preview_bulk(
        _context(), messages, at=at, users_files=_confined(users_files), query=query
    )
    _confirmation_artifacts(preview)
    return preview.to_dict()


@flow(name="create-bulk")
def create_bulk(
    messages: list[str],
    at: str | None = None,
    users_files: list[str] | None = None,
    query: str | None = None,
    confirm: bool = False,
) -> dict[str, Any]:
    """Preview, and only with ``confirm=True`` save the delivery; send it now unless
    ``at`` is given (then ``dispatch-due`` sends it at its time)."""
    ctx = _context()
    preview = dl.preview_bulk(ctx, messages, at=at, users_files=_confined(users_files), query=query)
    _confirmation_artifacts(preview)
    if not confirm:
        get_run_logger().info("not confirmed: nothing saved (run again with confirm=true)")
        return {**preview.to_dict(), "delivery_id": None}
    created = dl.create_bulk(ctx, preview)
    result = created.to_dict()
    if created.status == "queued":  # no send time: now, as a subflow (R12)
        result.update(dispatch_delivery(created.delivery_id))
    return result


# --- dispatch -----------------------------------------------------------------------


@task(cache_policy=NO_CACHE)
def claim(delivery_id: int, skip_if_taken: bool, join: bool) -> dispatching.Session | str:
    """Claim the delivery; with ``skip_if_taken`` a delivery another process is sending
    (or already sent) is a reason to skip, not a failure."""
    try:
        return dispatching.begin(_context(), delivery_id, join=join)
    except StateError as exc:
        if skip_if_taken:
            return exc.message
        raise


@task(
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
)
def send_chunk(session: dispatching.Session) -> int:
    """One chunk through the gateway. Retried with backoff on transient failures; the
    retry first settles the previous attempt (idempotency keys), so none is sent twice."""
    ctx = _context()
    gateway = ctx.gateway()
    try:
        return dispatching.send_chunk(ctx, session, gateway)
    finally:
        gateway.close()


@task(cache_policy=NO_CACHE)
def wrap_up(session: dispatching.Session) -> dict[str, Any]:
    return dispatching.finish(_context(), session).to_dict()


@flow(name="dispatch-delivery")
def dispatch_delivery(
    delivery_id: int, skip_if_taken: bool = False, join: bool = False
) -> dict[str, Any]:
    """Send one delivery chunk by chunk, then publish its summary. With ``join``, work
    beside the workers already sending it (each takes different chunks)."""
    ctx = _context()
    session = claim(delivery_id, skip_if_taken, join)
    if isinstance(session, str):
        get_run_logger().info("skipped delivery %s: %s", delivery_id, session)
        return {"delivery_id": delivery_id, "skipped": session}
    with dispatching.keep_alive(ctx, session):
        while send_chunk(session):
            pass
    result = wrap_up(session)
    summary = dl.delivery_summary(ctx, delivery_id)
    create_markdown_artifact(
        key=f"delivery-{delivery_id}-summary",
        markdown=(
            f"## Delivery {delivery_id}: {result['status']}\n\n"
            + _markdown_table(
                {
                    k: "—" if summary[k] is None else summary[k]
                    for k in (
                        "kind",
                        "recipients",
                        "messages",
                        "sent",
                        "errors",
                        "tickets_used",
                        "scheduled_at",
                        "finished_at",
                    )
                }
                | ({"scheduled_at": "now"} if summary["scheduled_at"] is None else {})
            )
            + f"\n\nBalance after: {accounts.balance(ctx)} tickets\n"
        ),
    )
    get_run_logger().info(
        "delivery %s %s: sent %s, errors %s",
        delivery_id,
        result["status"],
        result["sent"],
        result["errors"],
    )
    return result


@flow(name="dispatch-due")
def dispatch_due() -> list[dict[str, Any]]:
    """Send every delivery whose time has come; resume any whose process died."""
    results = [
        dispatch_delivery(delivery_id, skip_if_taken=True)
        for delivery_id in dispatching.due_ids(_context())
    ]
    return [r for r in results if "skipped" not in r]


@flow(name="resend-failures")
def resend_failures(delivery_id: int, at: str | None = None) -> dict[str, Any]:
    """R15: a new delivery of exactly the failed pairs of ``delivery_id``."""
    created = dl.resend_bulk(_context(), delivery_id, at=at)
    result = {**created.to_dict(), "resend_of": delivery_id}
    if created.status == "queued":
        result.update(dispatch_delivery(created.delivery_id))
    return result
