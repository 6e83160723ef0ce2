"""A small HTTP endpoint for what Kannel calls back with (stdlib server, a thread per
request):

- ``GET /dlr?key=…&status=%d&at=%T&ref=%F`` — a delivery report, the ``dlr-url`` the
  kannel gateway asks for with each message;
- ``GET /mo?from=%p&to=%P&text=%b&coding=%c&charset=%C`` — a reply, from a Kannel
  ``sms-service`` whose ``get-url`` is :func:`mo_get_url` (with ``max-messages = 0``: the
  service answers nothing back);
- ``GET /health``.

Its log lines show masked numbers only; the request line (which holds the sender's
number) is not logged.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from urllib.parse import parse_qs, urlsplit

from smsops.domain.phones import mask_phone
from smsops.errors import InputError, NotFoundError, SmsopsError
from smsops.services import inbound
from smsops.services.context import Context

log = logging.getLogger(__name__)

# Kannel's escapes for an sms-service get-url: sender, receiver, the message as it came
# (URL-encoded bytes), its coding (2 = UCS-2) and charset.
MO_QUERY = "from=%p&to=%P&text=%b&coding=%c&charset=%C"


def mo_get_url(base: str) -> str:
    """The ``get-url`` of the Kannel sms-service that forwards replies to ``base``
    (``http://host:port/mo``)."""
    return f"{base}?{MO_QUERY}"


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


class ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ctx: Context, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.ctx = ctx

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server: ReceiverServer
    protocol_version = "HTTP/1.1"  # keep-alive: Kannel may call back many times a second

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        # latin-1 keeps each URL-decoded byte as one character: decode_text() reads them.
        params = {
            k: v[-1]
            for k, v in parse_qs(url.query, keep_blank_values=True, encoding="latin-1").items()
        }
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
        except NotFoundError as exc:
            status, body = 404, exc.message
        except Exception:  # keep serving; the traceback names no phone number
            log.exception("receiver: %s failed", url.path)
            status, body = 500, "error"
        self._answer(status, body)

    def _dlr(self, params: dict[str, str]) -> tuple[int, str]:
        at = params.get("at", "")
        result = inbound.record_dlr(
            self.server.ctx,
            params["key"],
            int(params["status"]),
            at=datetime.fromtimestamp(int(at), UTC) if at.isdigit() else None,
            ref=params.get("ref") or None,
        )
        log.debug(
            "dlr %s: %s%s",
            result.key,
            result.dlr_status,
            "" if result.recorded else " (kept; a later interim report)",
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
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return None  # the request line carries phone numbers: see the masked lines above


class Receiver:
    """The endpoint on a background thread (tests, or beside another long-running job)."""

    def __init__(self, ctx: Context, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = ReceiverServer(ctx, (host, port))
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
        raise SmsopsError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None

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
