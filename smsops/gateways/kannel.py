"""The ``kannel`` gateway: Kannel's HTTP ``sendsms`` interface, in UCS-2, concurrently,
under a rate cap, with a delivery report asked for each message.

One POST per message: the text is the body (UTF-8, which Kannel turns into UCS-2 because
of ``X-Kannel-Coding: 2``); everything else travels in ``X-Kannel-*`` headers — the
credentials included, so no URL ever carries the password (httpx logs URLs at INFO, and
so do proxies in front of Kannel). The number goes as stored, E.164 (``+819012345678``).

Kannel's answers:

- 202 (``0: Accepted for delivery`` / ``3: Queued for later delivery``) → ``sent``;
- another 4xx → ``rejected: <Kannel's reason>`` (an authorization failure ends the batch:
  every later message would get the same answer);
- a refused connection, a connect timeout or a 5xx → Kannel did not take the message:
  tried again with backoff, then ``gateway_unavailable`` (and the rest of the batch is
  not tried: Kannel is down);
- an answer lost after the request went out (read timeout, dropped connection) →
  ``outcome_unknown``, never retried: Kannel may have queued it, and a retry could send
  it twice.

Kannel cannot say which messages it accepted before a crash: :meth:`accepted_keys` is None.
So the sender's ``hand_off`` is told WINDOW messages at a time, before they go out, with
the answers so far: a crash leaves at most WINDOW + ``concurrency`` messages in doubt.

Operator options: ``SMSOPS_KANNEL_CONCURRENCY`` requests in flight (default 4, 1..64);
``SMSOPS_KANNEL_VALIDITY_MINUTES`` sent as ``X-Kannel-Validity``, how long the SMSC keeps
trying a message before it drops it. Each delivery report carries the SMSC's answer
(``%A``), which history keeps as the carrier's reason.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import pandas as pd
from pydantic import SecretStr

from smsops.domain.vocabulary import REJECTED_PREFIX, ItemError, ItemStatus
from smsops.errors import ConfigError
from smsops.gateways import HandOff
from smsops.gateways.pacing import RateLimiter, shared_limiter
from smsops.settings import Settings

log = logging.getLogger(__name__)

SENT, ERROR = ItemStatus.SENT, ItemStatus.ERROR
UNAVAILABLE = ItemError.GATEWAY_UNAVAILABLE
UNKNOWN = ItemError.OUTCOME_UNKNOWN
# Delivery reports asked for: delivered (1), undeliverable (2), rejected by the SMSC (16)
# — the final states — and accepted by the SMSC (8), which settles a message whose answer
# was lost (outcome_unknown) as sent; "buffered" (4) would change nothing history shows.
DLR_MASK = 1 | 2 | 8 | 16
# Kannel's escapes in a dlr-url: %d the report type, %T its time (epoch s), %F the SMSC's id,
# %A the SMSC's answer with the report (an SMPP receipt's ``stat:UNDELIV err:001 …``, an
# HTTP SMSC's reply, ``NACK/…`` when the SMSC refused the message): the carrier's reason.
DLR_QUERY = "status=%d&at=%T&ref=%F&reason=%A"
# Each dlr-url carries the sending database's installation id as ``inst=…``: reports for
# two databases behind one receiver never land in the wrong one (the receiver refuses).
_INSTALLATION = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ERROR_WIDTH = 64  # delivery_items.error is VARCHAR(64)
# SMSOPS_RECEIVER_TOKEN travels as is in Kannel's callback URLs (dlr-url, get-url): Kannel
# reads '%' as an escape, so no percent-encoding — only characters a URL carries unescaped,
# and enough of them that guessing is hopeless (token_urlsafe(32) gives 43).
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,256}")
# Rows announced to hand_off at a time: at most WINDOW + concurrency messages are in
# doubt after a crash (4 in flight: 16, the bound #10 asks for). One announcement per 12
# messages: 0.97-1.00x the bare client's rate, 0.96-1.07x for code that announced nothing
# (benchmarks/kannel.py, interleaved on a quiet machine).
WINDOW = 12

T = TypeVar("T")
Outcome = tuple[str, str | None]  # (status, error)


class CappedTransport(httpx.AsyncBaseTransport):
    """Takes each request's turn from the limiter at the last moment before it goes out
    (retries count too: the cap is on what Kannel sees)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, limiter: RateLimiter) -> None:
        self.inner, self.limiter = inner, limiter

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self.limiter.acquire()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def rejected(reason: str) -> str:
    """``rejected: <Kannel's reason>``, one line, cut to fit the error column."""
    text = " ".join(reason.split()).rstrip(". ") or "no reason given"
    return f"{REJECTED_PREFIX}{text}"[:_ERROR_WIDTH]


def callback_token(token: SecretStr | str | None, *, wanted_by: str) -> str:
    """The shared secret of ``smsops receiver``'s callbacks (``SMSOPS_RECEIVER_TOKEN``),
    checked; a :class:`ConfigError` naming the variable — never its value — when it is
    missing or could not travel in a Kannel URL."""
    value = token.get_secret_value() if isinstance(token, SecretStr) else token
    if not value:
        raise ConfigError(
            f"{wanted_by} needs SMSOPS_RECEIVER_TOKEN, the shared secret every callback to "
            "smsops receiver carries (make one: python -c "
            "'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if not _TOKEN.fullmatch(value):
        raise ConfigError(
            "SMSOPS_RECEIVER_TOKEN must be 16 to 256 of A-Z a-z 0-9 - _ . ~ "
            "(it travels unescaped in Kannel's callback URLs)"
        )
    return value


def _password_from_block(name: str | None) -> SecretStr | None:
    """The Kannel password from a Prefect Secret block (never logged, never returned raw)."""
    if not name:
        return None
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(name)  # sync here (typed sync-or-async)
        return SecretStr(str(block.get()))
    except Exception as exc:  # Prefect raises several kinds for a missing block
        raise ConfigError(
            f"cannot load the Prefect Secret block {name!r}: {type(exc).__name__}"
        ) from None


class KannelGateway:
    """Sends through Kannel's ``sendsms`` (see the module docstring)."""

    name = "kannel"
    record: str | None = None  # Kannel keeps no record of the keys it accepted

    def __init__(
        self,
        settings: Settings,
        *,
        dlr_url: str | None = None,
        installation: str | None = None,
        concurrency: int | None = None,
        attempts: int = 4,
        backoff: float = 0.25,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        password = settings.kannel_password or _password_from_block(settings.kannel_password_block)
        if not settings.kannel_user or password is None:
            raise ConfigError(
                "the kannel gateway needs SMSOPS_KANNEL_USER and SMSOPS_KANNEL_PASSWORD "
                "(or SMSOPS_KANNEL_PASSWORD_BLOCK, a Prefect Secret block)"
            )
        # Until Settings has a field for it, a dlr_url comes from the caller.
        base = dlr_url if dlr_url is not None else settings.kannel_dlr_url
        if base and "%" in base:
            raise ConfigError("the DLR URL must not contain '%' (Kannel reads it as an escape)")
        token = ""
        if base:
            # The receiver refuses reports without its token: asking for them without it
            # would only fill Kannel's retry queue with refusals.
            token = callback_token(settings.receiver_token, wanted_by="SMSOPS_KANNEL_DLR_URL")
        if httpx.URL(settings.kannel_url).scheme not in ("http", "https"):
            raise ConfigError(f"SMSOPS_KANNEL_URL {settings.kannel_url!r} is not an http(s) URL")
        for what, value in (("USER", settings.kannel_user), ("FROM", settings.kannel_from)):
            if value and not value.isascii():
                raise ConfigError(f"SMSOPS_KANNEL_{what} must be ASCII (it travels in a header)")
        self.url = settings.kannel_url
        self.user = settings.kannel_user
        # SMSOPS_KANNEL_CONCURRENCY unless the caller says otherwise (tests)
        wanted = settings.kannel_concurrency if concurrency is None else concurrency
        self.concurrency = max(1, wanted)
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self._dlr_base = (
            f"{base}{'&' if '?' in base else '?'}token={token}&" if base else None
        )  # a secret too: it travels in a header, never in a URL httpx logs
        if installation is not None and not _INSTALLATION.fullmatch(installation):
            raise ConfigError("an installation id is 1 to 64 of A-Z a-z 0-9 _ -")
        self._installation = installation
        self._database_url = settings.database_url
        self._secret = password
        self._sender = settings.kannel_from
        self._validity = settings.kannel_validity_minutes
        self._timeout = timeout
        self._transport = transport
        self._limiter = (
            shared_limiter(("kannel", self.url, self.user), settings.rate_limit)
            if settings.rate_limit
            else None
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        cap = f"{self._limiter.rate:g}/s" if self._limiter else "none"
        return (
            f"KannelGateway(url={self.url!r}, user={self.user!r}, rate_limit={cap}, "
            f"concurrency={self.concurrency})"
        )

    # --- the Gateway protocol ------------------------------------------------------

    def send(self, batch: pd.DataFrame, hand_off: HandOff | None = None) -> pd.DataFrame:
        self._dlr_installation()
        keys = batch["idempotency_key"].astype(str).tolist()
        outcomes = (
            self._run(
                self._send_all(
                    batch["phone"].astype(str).tolist(),
                    batch["text"].astype(str).tolist(),
                    keys,
                    hand_off,
                )
            )
            if keys
            else []
        )
        return _results(keys, outcomes)

    def _dlr_installation(self) -> str | None:
        """The installation id the dlr-url carries: given, or this database's (read once,
        on the first send, so building a gateway stays offline)."""
        if self._dlr_base is None or self._installation is not None:
            return self._installation
        from smsops import store
        from smsops.store.schema import installation_id

        engine = store.connect(self._database_url)
        try:
            with store.write(engine) as conn:
                self._installation = installation_id(conn)
        finally:
            engine.dispose()
        return self._installation

    def accepted_keys(self, delivery_id: int) -> set[str] | None:
        return None  # Kannel keeps no record a resuming dispatcher could ask

    def close(self) -> None:
        if self._loop is None:
            return
        if self._client is not None:
            self._run(self._client.aclose())
            self._client = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join()
        self._loop.close()
        self._loop = self._thread = None

    # --- sending -------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the gateway's own event loop (a thread that lives as long as the
        gateway, so connections are reused across batches, and so that send() works where
        a loop is already running — a notebook)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="smsops-kannel", daemon=True
            )
            self._thread.start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _client_for_loop(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-Kannel-Username": self.user,
                "X-Kannel-Password": self._secret.get_secret_value(),  # type: ignore[union-attr]
                "X-Kannel-Coding": "2",  # UCS-2: Japanese text, 70 characters a message
            }
            if self._sender:
                headers["X-Kannel-From"] = self._sender
            if self._validity:
                # minutes the SMSC keeps trying (a switched-off phone): then it drops it
                headers["X-Kannel-Validity"] = str(self._validity)
            if self._dlr_base:
                headers["X-Kannel-DLR-Mask"] = str(DLR_MASK)
            transport = self._transport or httpx.AsyncHTTPTransport(
                limits=httpx.Limits(
                    max_connections=self.concurrency, max_keepalive_connections=self.concurrency
                )
            )
            if self._limiter is not None:
                transport = CappedTransport(transport, self._limiter)
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 5.0)),
                transport=transport,
            )
        return self._client

    async def _send_all(
        self, phones: list[str], texts: list[str], keys: list[str], hand_off: HandOff | None
    ) -> list[Outcome]:
        """Send in order with ``concurrency`` requests in flight. With ``hand_off``, the
        rows about to go out are announced WINDOW at a time, together with the answers
        received so far: after a crash only those announced and not answered are in doubt
        (at most WINDOW + concurrency). The announcement runs in the loop itself: it is
        one small statement, cheaper than any hop to a thread and back (a thread cost a
        fifth of the rate, #10)."""
        client = self._client_for_loop()
        n = len(keys)
        results: list[Outcome] = [(ERROR, UNAVAILABLE)] * n
        ended: str | None = None  # the error that ended the batch: later messages get it
        stopped: BaseException | None = None  # hand_off refused: nothing more goes out
        taken = announced = 0
        answered: list[int] = []  # indexes answered since the last announcement

        def take() -> int | None:
            nonlocal taken, announced, stopped
            if stopped is not None or taken >= n:
                return None
            if hand_off is not None and taken == announced:
                upto = min(n, announced + WINDOW)
                report = [(keys[i], *results[i]) for i in answered]
                answered.clear()
                try:
                    hand_off(upto, report)  # the rows are durable before they go out
                except Exception as exc:
                    stopped = exc
                    return None
                announced = upto
            taken += 1
            return taken - 1

        async def worker() -> None:
            nonlocal ended
            while (i := take()) is not None:
                if ended is not None:
                    results[i] = (ERROR, ended)  # never handed to Kannel
                else:
                    outcome = await self._send_one(client, phones[i], texts[i], keys[i])
                    results[i] = outcome
                    error = outcome[1]
                    if error == UNAVAILABLE or (error or "").startswith(f"{REJECTED_PREFIX}Author"):
                        ended = error
                answered.append(i)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, n))))
        if stopped is not None:
            raise stopped
        return results

    async def _send_one(
        self, client: httpx.AsyncClient, phone: str, text: str, key: str
    ) -> Outcome:
        headers = {"X-Kannel-To": phone}
        if self._dlr_base:
            headers["X-Kannel-DLR-URL"] = (
                f"{self._dlr_base}inst={self._installation}&key={key}&{DLR_QUERY}"
            )
        body = text.encode("utf-8")
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            outcome = await _attempt(lambda: client.post(self.url, content=body, headers=headers))
            if outcome is not None:
                return outcome
            if attempt < self.attempts:
                await asyncio.sleep(delay * (1 + random.random() / 2))  # jitter: no herd
                delay *= 2
        log.warning("kannel unavailable after %d attempts (%s)", self.attempts, key)
        return ERROR, UNAVAILABLE


def _results(keys: list[str], outcomes: list[Outcome]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "idempotency_key": pd.Series(keys, dtype=object),
            "status": pd.Series([s for s, _ in outcomes], dtype=object),
            "error": pd.Series([e for _, e in outcomes], dtype=object),
            "gateway_ref": None,
        }
    )


async def _attempt(post: Callable[[], Awaitable[httpx.Response]]) -> Outcome | None:
    """One request: its outcome, or None when Kannel certainly did not take the message
    and it may be tried again."""
    try:
        response = await post()
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
        return None  # never reached Kannel
    except httpx.TransportError as exc:
        log.warning("kannel answer lost (%s): outcome unknown", type(exc).__name__)
        return ERROR, UNKNOWN
    if response.status_code == 202:  # accepted, or queued for later delivery
        return SENT, None
    if response.status_code < 500:
        return ERROR, rejected(response.text)
    return None  # 5xx: Kannel says it did not queue it
