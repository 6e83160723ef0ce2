"""A real Kannel on loopback for tests and benchmarks: bearerbox + smsbox + fakesmsc
(Debian ``kannel``, ``kannel-extras``), configured into a temp dir on free ports.

Two fake SMSCs: ``fake`` receives what smsops sends (its fakesmsc prints every message;
:meth:`Kannel.received` reads them back, decoded) and ``fake-mo`` is where a short-lived
fakesmsc injects a reply (:meth:`Kannel.send_mo`), which smsbox forwards to ``mo_url``
with the receiver's token. smsbox retries a callback that failed (``http-request-retry``
times, ``http-queue-delay`` seconds apart; delivery reports too), as a deployment should.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote_to_bytes

import httpx

from smsops.receiver import mo_get_url
from smsops.settings import Settings

BEARERBOX = "/usr/sbin/bearerbox"
SMSBOX = "/usr/sbin/smsbox"
FAKESMSC = "/usr/lib/kannel/test/fakesmsc"
SHORTCODE = "12345"  # the number replies are sent to, and the global sender


def missing() -> list[str]:
    """The Kannel programs this machine lacks (install kannel kannel-extras)."""
    return [p for p in (BEARERBOX, SMSBOX, FAKESMSC) if not os.access(p, os.X_OK)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Kannel goes down with the test process, even when that one is SIGKILLed."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass(frozen=True)
class Received:
    """One message as the fake SMSC got it."""

    sender: str
    to: str
    text: str


_GOT = re.compile(r"Got message \d+: <(\S*) (\S*) (\S+) (.*)>$")


def decode_fakesmsc(kind: str, data: str) -> str:
    """fakesmsc prints UCS-2 and binary messages URL-encoded (space as ``+``)."""
    if kind == "text":
        return data
    raw = unquote_to_bytes(data.replace("+", " "))
    return raw.decode("utf-16-be" if kind in ("ucs-2", "ucs2") else "utf-8", errors="replace")


class RecordingTransport(httpx.AsyncHTTPTransport):
    """A real transport that notes when each request goes out, and its URL."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[float, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((time.monotonic(), str(request.url)))
        return await super().handle_async_request(request)


def max_in_any_second(times: list[float]) -> int:
    """The most events in any window [t, t + 1 s)."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what}")
        time.sleep(every)  # Kannel, fakesmsc or a sender: real processes


class Kannel:
    """bearerbox + smsbox + fakesmsc; ``with Kannel(dir, mo_url=...) as k:`` starts and
    stops them. :meth:`kill` takes Kannel down mid-way, :meth:`start` brings it back."""

    def __init__(
        self,
        workdir: Path,
        *,
        mo_url: str,
        token: str | None = None,
        log_level: int = 1,
        http_retries: int = 30,
        http_retry_delay: int = 1,
    ) -> None:
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mo_url = mo_url
        self.token = token or secrets.token_urlsafe(32)  # SMSOPS_RECEIVER_TOKEN's value
        self.log_level = log_level
        self.http_retries, self.http_retry_delay = http_retries, http_retry_delay
        self.user = "smsops"
        self.password = secrets.token_urlsafe(16)
        self._admin_password = secrets.token_urlsafe(16)
        self.ports = {
            name: free_port() for name in ("admin", "smsbox", "sendsms", "smsc", "smsc_mo")
        }
        self.config = self.dir / "kannel.conf"
        self.config.write_text(self._config(), encoding="utf-8")
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._starts = 0

    @property
    def sendsms_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['sendsms']}/cgi-bin/sendsms"

    def _config(self) -> str:
        d, p = self.dir, self.ports
        return f"""\
group = core
admin-port = {p["admin"]}
admin-interface = 127.0.0.1
admin-password = {self._admin_password}
admin-allow-ip = 127.0.0.1
smsbox-port = {p["smsbox"]}
smsbox-interface = 127.0.0.1
box-allow-ip = 127.0.0.1
log-file = "{d / "bearerbox.log"}"
log-level = {self.log_level}
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = fake
port = {p["smsc"]}
our-host = 127.0.0.1
connect-allow-ip = 127.0.0.1

group = smsc
smsc = fake
smsc-id = fake-mo
port = {p["smsc_mo"]}
our-host = 127.0.0.1
connect-allow-ip = 127.0.0.1
allowed-smsc-id = fake-mo

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {p["smsbox"]}
sendsms-port = {p["sendsms"]}
sendsms-interface = 127.0.0.1
global-sender = {SHORTCODE}
log-file = "{d / "smsbox.log"}"
log-level = {self.log_level}
mo-recode = true
http-request-retry = {self.http_retries}
http-queue-delay = {self.http_retry_delay}

group = sendsms-user
username = {self.user}
password = {self.password}
user-allow-ip = 127.0.0.1
max-messages = 1

group = sms-service
keyword = default
catch-all = true
max-messages = 0
get-url = "{mo_get_url(self.mo_url, self.token)}"
"""

    # --- processes -----------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.dir / log, "ab")  # noqa: SIM115 - the child keeps it
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        self._procs[name] = proc
        return proc

    def _status(self) -> str:
        try:
            return httpx.get(
                f"http://127.0.0.1:{self.ports['admin']}/status.txt",
                params={"password": self._admin_password},
                timeout=2,
            ).text
        except httpx.HTTPError:
            return ""

    def _alive(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"{name} exited; see {self.dir}")

    def start(self, timeout: float = 30) -> Kannel:
        """Start (or restart) bearerbox, the receiving fakesmsc and smsbox; return when
        smsbox takes sendsms requests and the fake SMSC is online."""
        self._starts += 1
        level = str(self.log_level)
        self._spawn("bearerbox", [BEARERBOX, "-v", level, str(self.config)], "bearerbox.out")

        def up() -> bool:
            self._alive("bearerbox")
            return "Status: running" in self._status()

        wait_for("bearerbox", up, timeout)
        # -m 0 with a message: send nothing, print everything received (at debug level).
        self._spawn(
            "fakesmsc",
            [FAKESMSC, "-H", "127.0.0.1", "-r", str(self.ports["smsc"]), "-m", "0", "x y text x"],
            f"fakesmsc-{self._starts}.log",
        )
        wait_for(
            "the fake SMSC", lambda: re.search(r"fake\[fake\].*\(online", self._status()), timeout
        )
        return self.start_smsbox(timeout)

    def start_smsbox(self, timeout: float = 30) -> Kannel:
        """Start smsbox (the HTTP front) and return when it takes sendsms requests."""
        self._spawn("smsbox", [SMSBOX, "-v", str(self.log_level), str(self.config)], "smsbox.out")

        def ready() -> bool:
            self._alive("smsbox")
            if "smsbox:" not in self._status():
                return False
            try:
                return httpx.get(self.sendsms_url, timeout=2).status_code == 403
            except httpx.HTTPError:
                return False

        wait_for("smsbox", ready, timeout)
        return self

    def site_settings(self) -> dict[str, str]:
        """The ``SMSOPS_*`` settings (lower-case names) that send through this Kannel."""
        return {
            "gateway": "kannel",
            "kannel_url": self.sendsms_url,
            "kannel_user": self.user,
            "kannel_password": self.password,
        }

    def stop_smsbox(self) -> None:
        """smsbox goes away (a restart, an outage of the HTTP front): sendsms requests are
        refused; bearerbox keeps what it queued and delivers it."""
        self._stop("smsbox")

    def kill(self) -> None:
        """Kannel crashes: SIGKILL smsbox and bearerbox (fakesmsc follows)."""
        for name in ("smsbox", "bearerbox"):
            proc = self._procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        self._stop("fakesmsc")

    def _stop(self, name: str, timeout: float = 10) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for name in ("smsbox", "fakesmsc", "bearerbox", "mo"):
            self._stop(name)

    def __enter__(self) -> Kannel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the fake SMSC -------------------------------------------------------------

    def received(self) -> list[Received]:
        """Every message the fake SMSC got, in order, across restarts."""
        got = []
        for i in range(1, self._starts + 1):
            path = self.dir / f"fakesmsc-{i}.log"
            if not path.exists():
                continue
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _GOT.search(line)
                if m:
                    got.append(Received(m[1], m[2], decode_fakesmsc(m[3], m[4])))
        return got

    def wait_received(self, count: int, timeout: float = 30) -> list[Received]:
        """Wait until the fake SMSC has got at least ``count`` messages in all."""
        wait_for(
            f"{count} messages at the fake SMSC", lambda: len(self.received()) >= count, timeout
        )
        return self.received()

    def send_mo(self, sender: str, text: str, to: str = SHORTCODE, timeout: float = 10) -> None:
        """A reply from ``sender``: UCS-2, as a Japanese handset sends it, injected by a
        fakesmsc on the ``fake-mo`` SMSC."""
        line = f"{sender} {to} ucs2 {quote(text.encode('utf-16-be'), safe='')}"
        log = f"mo-{secrets.token_hex(4)}.log"
        before = self._mo_count()
        self._spawn(
            "mo",
            [
                FAKESMSC,
                "-H",
                "127.0.0.1",
                "-r",
                str(self.ports["smsc_mo"]),
                "-m",
                "1",
                "-i",
                "0",
                line,
            ],
            log,
        )
        try:
            wait_for(
                "the reply to reach bearerbox",
                lambda: self._mo_count() > before,
                timeout,
            )
        finally:
            self._stop("mo")

    def failed_callbacks(self) -> int:
        """How many callbacks smsbox could not deliver so far (each one it will retry)."""
        path = self.dir / "smsbox.log"
        if not path.exists():
            return 0
        return path.read_text(encoding="utf-8", errors="replace").count("Couldn't ")

    def _mo_count(self) -> int:
        m = re.search(r"\[fake-mo\].*?rcvd: sms (\d+)", self._status())
        return int(m[1]) if m else 0


def offline_settings(**kw: object) -> Settings:
    """Kannel gateway settings pointing nowhere (tests that record requests instead)."""
    return Settings(
        gateway="kannel",
        kannel_url="http://127.0.0.1:9/cgi-bin/sendsms",
        kannel_user="smsops",
        kannel_password="pw",  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
