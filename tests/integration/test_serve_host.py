"""The must-show of #11 part 3: ``smsops serve`` on a fresh site hosts everything a
sending host runs — the scheduler, the drop-folder import, the receiver and the Prefect
UI — sends a scheduled delivery through a real Kannel on time, exactly once, takes a 停止
reply that Kannel forwards (R16), and on SIGTERM leaves nothing pending or running."""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from integration.kannel import Kannel, free_port, missing, wait_for
from integration.serving import cli, left_running, served, site_env, stop
from support import e164, mobile

# a Prefect server of its own: one such test at a time under `make test`'s two workers
pytestmark = pytest.mark.xdist_group("prefect-server")

USERS = 5
TEXTS = ["定刻のお知らせ", "配信停止は「停止」と返信"]
UNFINISHED = {"scheduled", "queued", "sending", "paused"}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(bool(missing()), reason="Kannel is not installed")
def test_issue11_serve_hosts_scheduler_import_receiver_and_ui_and_stops_clean(tmp_path: Path):
    port = free_port()
    with Kannel(tmp_path / "kannel", mo_url=f"http://127.0.0.1:{port}/mo") as k:
        drops = tmp_path / "drops"
        env = site_env(
            tmp_path,
            SMSOPS_GATEWAY="kannel",
            SMSOPS_KANNEL_URL=k.sendsms_url,
            SMSOPS_KANNEL_USER=k.user,
            SMSOPS_KANNEL_PASSWORD=k.password,
            SMSOPS_RECEIVER_TOKEN=k.token,
            SMSOPS_RECEIVER_PORT=str(port),
            SMSOPS_DROPS=str(drops),
            SMSOPS_DROPS_INTERVAL="5",  # the test's pace; an operator's default is 60 s
        )
        users = tmp_path / "users.csv"
        users.write_text(
            "user_id,phone\n" + "".join(f"u{i},{mobile(i)}\n" for i in range(1, USERS + 1)),
            encoding="utf-8",
        )
        cli(env, "users", "import", str(users))
        cli(env, "tickets", "add", str(2 * USERS))

        with served(tmp_path, env, interval=5, options=()) as serve:  # the defaults
            started = serve.started
            ui = httpx.get(started["ui_url"], timeout=10)
            assert ui.status_code == 200 and "<html" in ui.text.lower()  # the Prefect UI
            assert started["receiver_url"] == f"http://127.0.0.1:{port}"
            assert httpx.get(f"{started['receiver_url']}/health", timeout=5).text == "ok"

            at = datetime.now(UTC) + timedelta(seconds=15)
            created = cli(
                env, "bulk", "create", "-m", TEXTS[0], "-m", TEXTS[1], "--at", at.isoformat(),
                "--yes",
            )  # fmt: skip
            # a member export dropped after the delivery was saved (its users are not in it)
            drops.mkdir(exist_ok=True)
            export = drops / "members.csv"
            export.write_text(
                "会員ID,携帯電話番号\n" + "".join(f"m{i},{mobile(i)}\n" for i in range(11, 14)),
                encoding="utf-8",
            )
            hour_ago = time.time() - 3600  # written whole long ago, not still being written
            os.utime(export, (hour_ago, hour_ago))

            while datetime.now(UTC) < at - timedelta(seconds=1):
                assert k.received() == [], "sent before its time"
                time.sleep(0.2)  # smsops serve (a real process) reads the real time
            got = k.wait_received(2 * USERS, timeout=60)  # on time: within a minute of it
            sent_by = datetime.now(UTC)

            k.send_mo(e164(2), "停止")  # a reply, through Kannel's fake SMSC to /mo
            wait_for(
                "the 停止 reply to land as an opt-out",
                lambda: cli(env, "replies", "list", "--action", "opted_out")["replies"],
                timeout=30,
                every=1,
            )
            wait_for(  # import-drops runs every 5 s here (SMSOPS_DROPS_INTERVAL)
                "the import-drops flow to import the export",
                lambda: (drops / "processed" / "members.csv").exists(),
                timeout=40,
                every=1,
            )
            assert serve.process.poll() is None
            code = stop(serve)
            time.sleep(2)  # anything that outlived serve would still be sending by now
            got = k.received()

    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert left_running(tmp_path) == []
    assert sent_by <= at + timedelta(seconds=60)
    # exactly once: every (number, message), none twice
    assert Counter((r.to, r.text) for r in got) == Counter(
        (e164(i), t) for i in range(1, USERS + 1) for t in TEXTS
    )
    shown = cli(env, "deliveries", "show", str(created["delivery_id"]))["delivery"]
    assert (shown["status"], shown["sent"], shown["errors"]) == ("sent", 2 * USERS, 0)
    listed = cli(env, "deliveries", "list")["deliveries"]
    assert not [d for d in listed if d["status"] in UNFINISHED]  # nothing pending
    # the export's 3 members joined; the number that replied 停止 is on the opt-out list
    preview = cli(env, "bulk", "preview", "-m", "次回")
    assert (preview["recipients"], preview["excluded"]) == (USERS + 3 - 1, {"opted_out": 1})
