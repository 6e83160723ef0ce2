"""Forged, repeated and piled-up callbacks against a real ``smsops receiver`` on loopback,
over real HTTP (httpx, raw sockets), on SQLite and PostgreSQL.

What must hold: a /dlr or /mo without the shared token (SMSOPS_RECEIVER_TOKEN), or with
another, is refused (403) and changes nothing — and the same request with the token goes
through, so the refusal was the token's doing; repeating a callback changes nothing; held
or silent connections never get more handler threads than the limit, and the receiver
answers again once they are gone.
"""

from __future__ import annotations

import functools
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import and_, select
from support import add_users, e164, mobile

from smsops.receiver import Receiver
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services import people
from smsops.services.context import Context
from smsops.services.dispatch import dispatch
from smsops.settings import Settings
from smsops.store import read
from smsops.store.schema import items, optouts

T = TypeVar("T")
TOKEN = secrets.token_urlsafe(32)
WRONG = [
    TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B"),  # one character off
    TOKEN[:16],  # a prefix
    TOKEN + "x",  # longer
    TOKEN.upper() if TOKEN.upper() != TOKEN else TOKEN.lower(),  # another case
    "",
]


@pytest.fixture
def rctx(settings: Settings) -> Iterator[Context]:
    """An installation whose receiver has a token (on both stores)."""
    ctx = Context.open(settings.model_copy(update={"receiver_token": SecretStr(TOKEN)}))
    yield ctx
    ctx.close()


@pytest.fixture
def receiver(rctx: Context) -> Iterator[Receiver]:
    with Receiver(rctx) as server:
        yield server


def get(receiver: Receiver, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{receiver.url}{path}", params=params, timeout=10)


def optout_rows(ctx: Context) -> list[tuple[object, ...]]:
    with read(ctx.engine) as conn:
        return [tuple(r) for r in conn.execute(select(optouts).order_by(optouts.c.phone))]


def sent_message(ctx: Context) -> tuple[str, Callable[[], tuple[object, ...]]]:
    """One message sent through the outbox: its key and a snapshot of its row."""
    add_users(ctx, [mobile(1)])
    accounts.add_tickets(ctx, 1)
    delivery_id = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["セールのお知らせ"])).delivery_id
    assert dispatch(ctx, delivery_id).sent == 1
    this = and_(items.c.delivery_id == delivery_id, items.c.seq == 1, items.c.message_no == 1)

    def row() -> tuple[object, ...]:
        with read(ctx.engine) as conn:
            return tuple(conn.execute(select(items).where(this)).one())

    return f"smsops-{delivery_id}-1-1", row


def wait_for(what: str, check: Callable[[], object], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(0.02)  # the receiver's server threads, really running


def at_once(n: int, call: Callable[[], T]) -> list[T]:
    """``call()`` from ``n`` threads released at the same moment."""
    start = threading.Barrier(n)

    def go(_: int) -> T:
        start.wait()
        return call()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def handler_threads(receiver: Receiver) -> int:
    """The threads handling ``receiver``'s connections now."""
    return sum(t.name == receiver.server.handler_name for t in threading.enumerate())


# --- the token -----------------------------------------------------------------------


def test_stop_without_the_token_is_refused_and_changes_nothing(receiver, rctx):
    people.optout_add(rctx, mobile(2), source="cli")
    before = optout_rows(rctx)
    stop = {"from": e164(1), "to": "12345", "text": "STOP"}
    for forged in (stop, {**stop, "text": "停止", "coding": "0", "charset": "UTF-8"}):
        answer = get(receiver, "/mo", **forged)
        assert answer.status_code == 403 and answer.text == "forbidden"
    assert optout_rows(rctx) == before
    assert get(receiver, "/health").status_code == 200  # open: it changes nothing

    assert get(receiver, "/mo", token=TOKEN, **stop).status_code == 200  # the control
    assert sorted(people.load_optouts(rctx)) == [e164(1), e164(2)]


def test_stop_with_a_wrong_token_is_refused_and_changes_nothing(receiver, rctx):
    stop = {"from": e164(1), "text": "STOP"}
    for wrong in WRONG:
        assert get(receiver, "/mo", token=wrong, **stop).status_code == 403, wrong
    # Bytes no token has (URL-decoded as latin-1), and the token twice with a wrong last.
    raw = httpx.get(f"{receiver.url}/mo?token=%FF%FE&from=%2B819010000001&text=STOP", timeout=10)
    assert raw.status_code == 403
    twice = f"{receiver.url}/mo?token={TOKEN}&token=nope&from=%2B819010000001&text=STOP"
    assert httpx.get(twice, timeout=10).status_code == 403
    assert optout_rows(rctx) == []

    assert get(receiver, "/mo", token=TOKEN, **stop).status_code == 200  # the control
    assert people.load_optouts(rctx) == [e164(1)]


def test_forged_dlr_without_the_token_is_refused_and_the_item_unchanged(receiver, rctx):
    key, row = sent_message(rctx)
    before = row()
    forged = {"key": key, "status": "2", "at": "1767225600", "ref": "forged"}  # undeliverable
    assert get(receiver, "/dlr", **forged).status_code == 403
    for wrong in WRONG:
        assert get(receiver, "/dlr", token=wrong, **forged).status_code == 403, wrong
    # Without the token a caller cannot even learn which keys exist.
    assert get(receiver, "/dlr", key="smsops-999-1-1", status="1").status_code == 403
    assert row() == before

    assert get(receiver, "/dlr", token=TOKEN, **forged).status_code == 200  # the control
    assert row() != before


# --- repeats -------------------------------------------------------------------------


def test_the_same_dlr_and_the_same_stop_twice_change_nothing_the_second_time(receiver, rctx):
    key, row = sent_message(rctx)
    report = {"token": TOKEN, "key": key, "status": "1", "at": "1767225600", "ref": "abc"}
    assert get(receiver, "/dlr", **report).status_code == 200
    first = row()
    # Kannel repeats a callback whose answer it lost (http-request-retry); an SMSC may
    # send the report again later, or without its time.
    repeats = [report, {**report, "at": "1767229200"}, {**report, "at": "", "ref": "other"}]
    for again in repeats:
        assert get(receiver, "/dlr", **again).status_code == 200
        assert row() == first

    stop = {"token": TOKEN, "from": e164(1), "text": "停止"}
    assert get(receiver, "/mo", **stop).status_code == 200
    listed = optout_rows(rctx)
    assert [r[0] for r in listed] == [e164(1)]
    assert get(receiver, "/mo", **stop).status_code == 200
    assert get(receiver, "/mo", **{**stop, "from": e164(1).removeprefix("+")}).status_code == 200
    assert optout_rows(rctx) == listed  # once, with its first time and source


# SQLite takes its write lock before it looks, so the race is PostgreSQL's.
@pytest.mark.parametrize("settings", ["postgres"], indirect=True)
def test_the_same_stop_at_the_same_moment_lists_the_number_once_and_never_fails(receiver, rctx):
    # Kannel retrying a reply while its first try still runs: the same STOP, 8 at once.
    for i in range(1, 11):
        stop = {"token": TOKEN, "from": e164(i), "text": "STOP"}
        answers = at_once(8, functools.partial(get, receiver, "/mo", **stop))
        assert [a.status_code for a in answers] == [200] * 8, i
    assert sorted(people.load_optouts(rctx)) == [e164(i) for i in range(1, 11)]


# --- bounded handlers ----------------------------------------------------------------


def connect(receiver: Receiver) -> socket.socket:
    host, port = receiver.server.server_address[:2]
    return socket.create_connection((str(host), port), timeout=10)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_an_answer_is_one_whole_http_response_with_its_date(rctx):
    """The receiver writes each answer itself, in one write (#12): status line, Server,
    a Date of this second, the length of the body and nothing after it, so a keep-alive
    connection reads the next answer whole."""
    with Receiver(rctx) as receiver:
        conn = connect(receiver)
        try:
            before = time.time()
            conn.sendall(HEALTH + HEALTH)  # two requests on one connection, pipelined
            data = b""
            while data.count(b"\r\n\r\nok") < 2:
                chunk = conn.recv(4096)
                assert chunk, data
                data += chunk
            after = time.time()
        finally:
            conn.close()
    answers = data.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 2 and all(a.endswith(b"\r\n\r\nok") for a in answers)
    head = answers[0].split(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:])
    assert head[0] == "200 OK" and fields["Content-Length"] == "2"
    assert fields["Server"].startswith("BaseHTTP/") and "Connection" not in fields
    assert int(before) <= parsedate_to_datetime(fields["Date"]).timestamp() <= after


def held_connection(receiver: Receiver) -> socket.socket:
    """A client that starts a request and never finishes it (a slow or stuck caller)."""
    conn = connect(receiver)
    conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: headers go on
    return conn


HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def answer(conn: socket.socket) -> bytes:
    """One whole response (``/health`` answers ``ok``)."""
    data = b""
    while not data.endswith(b"\r\n\r\nok"):
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_held_connections_beyond_the_limit_never_get_more_threads_than_the_limit(rctx):
    limit, extra = 4, 12
    with Receiver(rctx, max_handlers=limit, idle_timeout=60) as receiver:
        held = [held_connection(receiver) for _ in range(limit + extra)]
        try:
            wait_for("the limit's worth of handlers", lambda: handler_threads(receiver) == limit)
            most = 0
            for _ in range(50):  # half a second: the 12 others get no thread
                most = max(most, handler_threads(receiver))
                time.sleep(0.01)  # the receiver's server, really serving
            assert most == limit
        finally:
            for conn in held:
                conn.close()
        # Released: the waiting connections are taken and end; the receiver answers.
        assert get(receiver, "/health").status_code == 200
        stop = {"token": TOKEN, "from": e164(3), "text": "STOP"}
        assert get(receiver, "/mo", **stop).status_code == 200
        assert people.load_optouts(rctx) == [e164(3)]
        wait_for("the handlers to end", lambda: handler_threads(receiver) == 0)


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_silent_connections_are_closed_after_the_idle_timeout_and_free_their_handlers(rctx):
    with Receiver(rctx, max_handlers=2, idle_timeout=0.5) as receiver:
        silent = [held_connection(receiver) for _ in range(2)]
        try:
            wait_for("both handlers", lambda: handler_threads(receiver) == 2)
            started = time.monotonic()
            # The server hangs up on them (EOF), without their help…
            for conn in silent:
                assert conn.recv(1024) == b""
            # …and answers a new caller on a freed handler.
            assert get(receiver, "/health").status_code == 200
            assert time.monotonic() - started < 5
        finally:
            for conn in silent:
                conn.close()


@pytest.mark.parametrize("settings", ["sqlite"], indirect=True)
def test_a_kept_alive_connection_makes_room_for_a_waiting_one(rctx):
    # Kannel keeps its connections open between callbacks: at the limit, one answered
    # connection is closed so that a waiting one gets the handler now, not after the
    # idle timeout.
    with Receiver(rctx, max_handlers=1, idle_timeout=60) as receiver:
        first = connect(receiver)
        first.sendall(HEALTH)
        alone = answer(first)
        assert alone.startswith(b"HTTP/1.1 200") and b"Connection: close" not in alone
        second = connect(receiver)
        second.sendall(HEALTH)
        wait_for("the second to wait for the handler", lambda: receiver.server.crowded)
        first.sendall(HEALTH)
        crowded = answer(first)
        assert crowded.startswith(b"HTTP/1.1 200") and b"Connection: close" in crowded
        assert first.recv(1) == b""  # closed by the receiver…
        assert answer(second).startswith(b"HTTP/1.1 200")  # …and the second answered
        first.close()
        second.close()
