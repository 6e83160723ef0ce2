"""Long-running and reporting commands: serve, receiver, report."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from smsops import i18n
from smsops.cli.common import JsonOpt, command, context, emit, out, parse_delivery_id
from smsops.errors import ReportError


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
    as_json: JsonOpt = False,
) -> None:
    """Long-running Prefect scheduler that sends scheduled deliveries at their time.

    Serves the smsops deployments, with dispatch-due on an interval. Uses PREFECT_API_URL
    if set, else starts a private Prefect server on loopback. With --json, stdout carries
    one JSON document (the API URL and the deployments) and Prefect's own output goes to
    stderr.
    """
    from flows.serve import serve as run
    from smsops.logs import install_masking

    install_masking()

    stdout = sys.stdout

    def ready(url: str, deployments: list[str]) -> None:
        if as_json:
            info = {"api_url": url, "deployments": deployments, "interval": interval}
            print(json.dumps(info), file=stdout, flush=True)
        else:
            out.print(f"serving {', '.join(deployments)} via {url}")

    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        run(interval=interval, ready=ready)


# --- Kannel callbacks (issue 6) -------------------------------------------------------


@command
def receiver(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 13080,
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
        receiving.serve(ctx, host, port, ready=ready)
