"""Long-running and reporting commands: serve, receiver, report."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from smsops import i18n
from smsops.cli.common import JsonOpt, command, context, emit, out, parse_delivery_id
from smsops.errors import ReportError, ServerError

if TYPE_CHECKING:
    from smsops.receiver import Receiver
    from smsops.services.context import Context


def register(app: typer.Typer) -> None:
    """Add ``report``, ``serve`` and ``receiver`` to the root ``app``."""
    app.command("report")(report)
    app.command("serve")(serve)
    app.command("receiver")(receiver)


def _positive(seconds: float) -> float:
    """A usage error for an interval of 0 or less, which Prefect's schedule refuses."""
    if seconds <= 0:
        raise typer.BadParameter(f"{seconds} is not a positive number of seconds")
    return seconds


@command
def report(
    delivery_id: Annotated[
        int | None,
        typer.Argument(
            metavar="ID", parser=parse_delivery_id, help="Delivery id; default: the latest."
        ),
    ] = None,
    html: Annotated[
        Path, typer.Option("--html", help="Write the report here (one self-contained file).")
    ] = ...,  # type: ignore[assignment]
    as_json: JsonOpt = False,
) -> None:
    """Run the delivery report notebook and export it as standalone HTML, for mail.

    Needs the notebooks extra. Example: smsops report 12 --html report.html"""
    try:  # papermill, nbconvert and matplotlib: only here
        from smsops.reports import run_report
    except ImportError as exc:
        raise ReportError(f"smsops report needs the notebooks extra ({exc})") from None
    result = run_report(delivery_id, html)
    emit(
        as_json,
        result,
        lambda: out.print(
            i18n._("delivery {id}: report written to {path}").format(
                id=result["delivery_id"], path=result["html"]
            )
        ),
    )


@command
def serve(
    interval: Annotated[
        float,
        typer.Option(
            metavar="SECONDS", callback=_positive, help="Seconds between dispatch-due runs."
        ),
    ] = 10.0,
    ui: Annotated[
        bool,
        typer.Option(
            "--ui/--no-ui",
            help="Serve the Prefect UI from the private Prefect server and print its URL.",
        ),
    ] = True,
    receiver: Annotated[
        bool,
        typer.Option(
            "--receiver/--no-receiver",
            help="Receive Kannel's delivery reports and replies in this process, on "
            "SMSOPS_RECEIVER_HOST:SMSOPS_RECEIVER_PORT (default 127.0.0.1:13080); needs "
            "SMSOPS_RECEIVER_TOKEN.",
        ),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Everything a sending host runs, in one process, until SIGTERM or Ctrl-C (#11).

    Serves the smsops deployments — dispatch-due every SECONDS, import-drops every 60 s
    over SMSOPS_DROPS, and the rest on demand — the receiver (/dlr, /mo) and the Prefect
    UI. Uses PREFECT_API_URL if set, else starts a private Prefect server on loopback.
    On SIGTERM or Ctrl-C it takes no new run, cancels the runs in progress (dispatch-due
    resumes a delivery they were sending, each pair exactly once), stops the receiver and
    the private server, and exits 0. With --json, stdout carries one JSON document (the
    URLs and the deployments) and Prefect's own output goes to stderr. Example:
    SMSOPS_RECEIVER_TOKEN=... smsops serve
    """
    import logging

    from flows.serve import Serving
    from flows.serve import serve as run
    from smsops.logs import install_masking

    install_masking()
    stdout = sys.stdout

    with contextlib.ExitStack() as stack:
        beside = None
        receiver_url = None
        if receiver:
            from smsops.gateways.kannel import callback_token
            from smsops.receiver import Receiver

            ctx = stack.enter_context(context(True))
            settings = ctx.settings
            # before anything starts: no token (or a taken port) is one line, exit 1
            callback_token(
                settings.receiver_token,
                wanted_by="the receiver of smsops serve (--no-receiver turns it off)",
            )
            logging.getLogger("smsops.receiver").setLevel(logging.INFO)
            beside = _listening(Receiver, ctx, settings.receiver_host, settings.receiver_port)
            receiver_url = beside.url

        def ready(started: Serving) -> None:
            if as_json:
                info = {
                    "api_url": started.api_url,
                    "ui_url": started.ui_url,
                    "receiver_url": receiver_url,
                    "deployments": started.deployments,
                    "interval": interval,
                }
                print(json.dumps(info), file=stdout, flush=True)
                return
            out.print(
                i18n._("serving {deployments} via {url}").format(
                    deployments=", ".join(started.deployments), url=started.api_url
                )
            )
            if started.ui_url:
                out.print(i18n._("Prefect UI: {url}").format(url=started.ui_url))
            if receiver_url:
                out.print(
                    i18n._("receiver: {url} (/dlr, /mo with ?token=$SMSOPS_RECEIVER_TOKEN)").format(
                        url=receiver_url
                    )
                )
            out.print(i18n._("SIGTERM or Ctrl-C stops everything"))

        with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
            run(interval=interval, ready=ready, ui=ui, beside=beside)


def _listening(receiver_class: type[Receiver], ctx: Context, host: str, port: int) -> Receiver:
    """The receiver, listening (not yet answering); a taken port is one clear line."""
    try:
        return receiver_class(ctx, host, port)
    except OSError as exc:
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


# --- Kannel callbacks (issue 6) -------------------------------------------------------


@command
def receiver(
    host: Annotated[
        str | None,
        typer.Option(help="Interface to listen on (default: SMSOPS_RECEIVER_HOST, 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Port to listen on, 0: any free one (default: SMSOPS_RECEIVER_PORT, 13080).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Receive Kannel's delivery reports (/dlr) and replies (/mo) until interrupted.

    Every /dlr and /mo request must carry SMSOPS_RECEIVER_TOKEN as ?token=... (403
    otherwise); without the variable the receiver does not start. /health is open.
    """
    import logging

    from smsops import receiver as receiving
    from smsops.logs import install_masking

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    install_masking()  # its own lines are masked already; this covers everything else

    def ready(url: str) -> None:
        urls = {"url": url, "dlr_url": f"{url}/dlr", "mo_url": f"{url}/mo"}
        emit(
            as_json,
            urls,
            lambda: out.print(
                f"listening on {url} (/dlr, /mo with ?token=$SMSOPS_RECEIVER_TOKEN); Ctrl-C stops"
            ),
        )
        sys.stdout.flush()

    with context(True) as ctx:
        host = ctx.settings.receiver_host if host is None else host
        port = ctx.settings.receiver_port if port is None else port
        receiving.serve(ctx, host, port, ready=ready)
