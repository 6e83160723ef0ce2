"""A small HTTP endpoint for what Kannel calls back with (stdlib server, at most
``max_handlers`` connections handled at once):

- ``GET /dlr?token=…&inst=…&key=…&status=%d&at=%T&ref=%F&reason=%A`` — a delivery
  report, the ``dlr-url`` the kannel gateway asks for with each message (``reason``: the
  SMSC's answer, kept with the report). ``inst`` is the sending
  database's installation id: a report for another installation is refused (409), and
  so is one whose ``ref`` is not the SMSC id already recorded for the message; an
  unknown report type (``status=-1``, a bit smsops does not know) is refused (400). Each
  refusal is logged;
- ``GET /mo?token=…&from=%p&to=%P&text=%b&coding=%c&charset=%C`` — a reply, from a Kannel
  ``sms-service`` whose ``get-url`` is :func:`mo_get_url` (with ``max-messages = 0``: the
  service answers nothing back);
- ``GET /health`` (open: it tells nothing and changes nothing).

``/dlr`` and ``/mo`` change what smsops sends (a STOP puts a number on the opt-out list),
so each must carry ``SMSOPS_RECEIVER_TOKEN``; without it, or with another, the answer is
403 and nothing changes. There is no tokenless mode, not even on loopback: any local
process — or any web page the operator opens, through an ``<img src=…>`` — can reach
127.0.0.1. Repeating a callback changes nothing (Kannel repeats one when its answer is
lost, with ``http-request-retry``).

Delivery reports come back at the rate messages go out (#12), so they are written in
batches: each ``/dlr`` handler hands its report to one writer thread
(:class:`~smsops.services.report_batches.ReportBatcher`), which records what has piled up
— waiting at most ``linger`` seconds for more, at most ``max_batch`` reports — in one
transaction, and the handler answers only once that transaction has committed. If it
fails, every request of the batch is answered 503 (store locked or away) or 500, so
Kannel sends each again; none is ever answered 200 unrecorded. ``benchmarks/dlr.py``
measures the rate against Kannel's own.

Why the stdlib server and not an ASGI stack (Starlette + uvicorn, both installed with
Prefect): measured on loopback, 16 keep-alive connections, same client, same run, this
server (Nagle's algorithm off, below) answered ``/health`` ~8,100 times/s; uvicorn (h11:
its C parser httptools is not installed) ~2,200/s with a bare ASGI app and ~1,400/s with
Starlette. The HTTP layer was never what limited the rate: one transaction (and, on
SQLite, one wait for the write lock) per report was, and batching is what fixes that.
A thread per connection also keeps the limits below exact and testable.

Its log lines show masked numbers only; the request line (which holds the sender's
number, and the token) is not logged.
"""

from __future__ import annotations

import functools
import hmac
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import SecretStr

from smsops.domain.phones import mask_phone
from smsops.errors import InputError, NotFoundError, ServerError
from smsops.gateways.kannel import callback_token
from smsops.logs import mask_text
from smsops.services import inbound
from smsops.services.context import Context
from smsops.services.report_batches import LINGER, MAX_BATCH, BatchFailed, ReportBatcher

log = logging.getLogger(__name__)

# Kannel's escapes for an sms-service get-url: sender, receiver, the message as it came
# (URL-encoded bytes), its coding (2 = UCS-2) and charset.
MO_QUERY = "from=%p&to=%P&text=%b&coding=%c&charset=%C"
# Callbacks handled at once. Each needs a database connection (SQLAlchemy's default pool
# holds 15 on PostgreSQL; SQLite writes one at a time anyway): more threads would only
# wait on the store. Connections beyond them wait to be accepted, never get a thread.
MAX_HANDLERS = 16
# A connection silent this long is closed (Kannel keeps connections alive between
# callbacks; a silent one would hold a handler for ever).
IDLE_TIMEOUT = 10.0
_CALLBACKS = ("/dlr", "/mo")  # the paths that need the token


def mo_get_url(base: str, token: str | SecretStr) -> str:
    """The ``get-url`` of the Kannel sms-service that forwards replies to ``base``
    (``http://host:port/mo``), with the receiver's token.

    >>> mo_get_url("http://127.0.0.1:13080/mo", "0123456789abcdef")
    'http://127.0.0.1:13080/mo?token=0123456789abcdef&from=%p&to=%P&text=%b&coding=%c&charset=%C'
    """
    value = callback_token(token, wanted_by="the MO get-url")
    return f"{base}{'&' if '?' in base else '?'}token={value}&{MO_QUERY}"


def _utf8(value: str | None) -> str | None:
    """A query value read as latin-1 (one character a byte) as the UTF-8 it most likely
    is; as it came when it is not UTF-8."""
    if not value:
        return None
    raw = value.encode("latin-1")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return value


def decode_text(raw: bytes, coding: str | None, charset: str | None) -> str:
    """A message's bytes as Kannel forwards them: UCS-2 (coding 2) is UTF-16BE; otherwise
    the charset Kannel names, UTF-8 when it names none it can be read with."""
    if coding == "2" or (charset or "").upper().replace("-", "") in ("UCS2", "UTF16BE"):
        return raw.decode("utf-16-be", errors="replace")
    for name in (charset, "utf-8"):
        if name:
            try:
                return raw.decode(name)
            except (LookupError, UnicodeDecodeError):
                continue
    return raw.decode("utf-8", errors="replace")


class ReceiverServer(HTTPServer):
    """The HTTP server: a thread per connection, at most ``max_handlers`` of them; refuses
    to start without ``SMSOPS_RECEIVER_TOKEN`` (a ConfigError, before it listens)."""

    request_queue_size = 128  # connections waiting for a handler wait here, in the kernel

    def __init__(
        self,
        ctx: Context,
        address: tuple[str, int],
        *,
        max_handlers: int = MAX_HANDLERS,
        idle_timeout: float = IDLE_TIMEOUT,
        max_batch: int = MAX_BATCH,
        linger: float = LINGER,
    ) -> None:
        if max_handlers < 1:
            raise ValueError("max_handlers must be at least 1")
        self._token = callback_token(ctx.settings.receiver_token, wanted_by="the receiver").encode()
        # delivery reports: one writer, one transaction per batch (#12)
        self.batcher = ReportBatcher(max_batch=max_batch, linger=linger)
        self.max_handlers = max_handlers
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_handlers)
        self._waiting = threading.Event()  # an accepted connection waits for a handler
        self._closing = threading.Event()
        super().__init__(address, _Handler)
        self.ctx = ctx
        # the name of each handler thread: one server's are told from another's
        self.handler_name = f"smsops-receiver-{self.server_address[1]}"

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def authorized(self, given: str) -> bool:
        """Does a request's ``token`` match? (in constant time: no timing oracle)"""
        return hmac.compare_digest(given.encode("latin-1"), self._token)

    @property
    def crowded(self) -> bool:
        """A connection is waiting for a handler: answered ones should make room."""
        return self._waiting.is_set()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to a thread of its own once fewer than ``max_handlers``
        are busy; until then it waits here, and later ones in the listen backlog."""
        if not self._slots.acquire(blocking=False):
            self._waiting.set()
            try:
                while not self._slots.acquire(timeout=0.1):
                    if self._closing.is_set():
                        self.shutdown_request(request)
                        return
            finally:
                self._waiting.clear()
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=self.handler_name,
            daemon=True,  # an open connection never holds the process up
        )
        try:
            thread.start()
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Only the connection's own failures get here (a client hanging up mid-request;
        # do_GET logs its errors itself): no news, where socketserver would print a
        # traceback on stderr.
        log.debug("receiver: connection from %s failed", client_address[0], exc_info=True)

    def shutdown(self) -> None:
        self._closing.set()
        super().shutdown()

    def server_close(self) -> None:
        super().server_close()
        self.batcher.close()  # records what is queued; a later report is answered 503


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    """An HTTP Date header's value, made once a second."""
    return formatdate(second, usegmt=True)


class _Handler(BaseHTTPRequestHandler):
    server: ReceiverServer
    protocol_version = "HTTP/1.1"  # keep-alive: Kannel may call back many times a second
    # The headers and the body go out in two writes: with Nagle's algorithm on, the second
    # waits for the client's delayed ACK (40 ms on Linux), which capped a connection at 25
    # answers a second.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)  # a silent connection ends

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        # latin-1 keeps each URL-decoded byte as one character: decode_text() reads them.
        params = {
            k: v[-1]
            for k, v in parse_qs(url.query, keep_blank_values=True, encoding="latin-1").items()
        }
        if url.path in _CALLBACKS and not self.server.authorized(params.pop("token", "")):
            # Before anything is parsed: a caller without the token learns nothing.
            log.warning(
                "receiver: refused %s from %s (no or wrong token)", url.path, self.client_address[0]
            )
            self._answer(403, "forbidden")
            return
        routes: dict[str, Callable[[dict[str, str]], tuple[int, str]]] = {
            "/dlr": self._dlr,
            "/mo": self._mo,
            "/health": lambda _: (200, "ok"),
        }
        route = routes.get(url.path)
        if route is None:
            self._answer(404, "not found")
            return
        try:
            status, body = route(params)
        except (InputError, ValueError, KeyError) as exc:
            status, body = 400, f"bad request: {exc}"
            log.warning("receiver: refused %s: %s", url.path, mask_text(str(exc))[:200])
        except inbound.ReportRefused as exc:
            status, body = 409, exc.message
            log.warning("receiver: refused %s: %s", url.path, mask_text(exc.message)[:200])
        except NotFoundError as exc:
            status, body = 404, exc.message
        except BatchFailed as exc:  # not recorded: Kannel sends it again (logged once)
            status, body = (503, "unavailable") if exc.unavailable else (500, "error")
        except Exception:  # keep serving; the traceback names no phone number
            log.exception("receiver: %s failed", url.path)
            status, body = 500, "error"
        self._answer(status, body)

    def _dlr(self, params: dict[str, str]) -> tuple[int, str]:
        at = params.get("at", "")
        report = inbound.parse_dlr(
            params["key"],
            int(params["status"]),
            at=datetime.fromtimestamp(int(at), UTC) if at.isdigit() else None,
            ref=params.get("ref") or None,
            # absent from reports asked for before smsops carried it (Kannel may still
            # hold some): those cannot be told apart, and are taken as before
            installation=params.get("inst") or None,
            reason=_utf8(params.get("reason")),  # absent from reports asked for before
        )
        # Returns once the batch that holds it has committed (raises if it failed).
        result = self.server.batcher.record(self.server.ctx, report)
        log.debug(
            "dlr %s: %s%s",
            result.key,
            result.dlr_status,
            "" if result.recorded else " (unchanged: a repeat, or interim after final)",
        )
        return 200, "ok"

    def _mo(self, params: dict[str, str]) -> tuple[int, str]:
        sender = params["from"]
        text = decode_text(
            params.get("text", "").encode("latin-1"), params.get("coding"), params.get("charset")
        )
        result = inbound.handle_reply(self.server.ctx, sender, text)
        log.info(
            "reply from %s: %s%s",
            mask_phone(result.phone or sender),
            result.action,
            f" ({result.reason})" if result.reason else "",
        )
        return 200, ""  # an empty answer: Kannel sends nothing back

    def _answer(self, status: int, body: str) -> None:
        """The response in one write: status line, headers and body (what send_response,
        send_header and end_headers would send, without building the date each time —
        the receiver is CPU-bound at Kannel's report rate, #12)."""
        data = body.encode("utf-8")
        close = self.server.crowded  # give the handler to a waiting connection
        head = (
            f"{self.protocol_version} {status} {self.responses[status][0]}\r\n"
            f"Server: {self.version_string()}\r\n"
            f"Date: {_http_date(int(time.time()))}\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
        )
        if close:
            self.close_connection = True
        self.wfile.write(head.encode("latin-1") + data)

    def log_message(self, format: str, *args: object) -> None:
        return None  # the request line carries phone numbers: see the masked lines above


class Receiver:
    """The endpoint on a background thread (tests, or beside another long-running job)."""

    def __init__(
        self,
        ctx: Context,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_handlers: int = MAX_HANDLERS,
        idle_timeout: float = IDLE_TIMEOUT,
        max_batch: int = MAX_BATCH,
        linger: float = LINGER,
    ) -> None:
        self.server = ReceiverServer(
            ctx,
            (host, port),
            max_handlers=max_handlers,
            idle_timeout=idle_timeout,
            max_batch=max_batch,
            linger=linger,
        )
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="smsops-receiver", daemon=True
        )

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    ctx: Context,
    host: str = "127.0.0.1",
    port: int = 13080,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve in the foreground until interrupted (Ctrl-C or SIGTERM)."""
    try:
        server = ReceiverServer(ctx, (host, port))
    except OSError as exc:
        raise ServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    if ready is not None:
        ready(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
