"""``smsops report ID --html PATH`` end to end: the report notebook executed by papermill and
exported to one self-contained HTML file (plots inline, numbers masked), then opened in
headless Chromium, which must render its tables and images from the local file alone."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from support import RefusingOutbox, add_users, e164, mobile

from smsops.gateways.outbox import OutboxGateway
from smsops.services import account as accounts
from smsops.services import deliveries as dl
from smsops.services.context import Context
from smsops.services.dispatch import dispatch
from smsops.settings import Settings

UNMASKED = re.compile(r"\+81\d{9,10}|0[6-9]0-?\d{4}-?\d{4}")
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GREEN = np.array([0x2E, 0x7D, 0x32]) / 255  # "sent" in the status plot (smsops.reports)




@pytest.fixture(scope="module", params=["en", "ja"])
def report(request, tmp_path_factory) -> dict:
    """A delivery with failures (20 recipients, 2 messages; numbers 7 and 8 refused, 19 and
    20 out of tickets), reported through the CLI as the shell would run it, in English and
    in Japanese (SMSOPS_LANG=ja, #15)."""
    language = request.param
    tmp = tmp_path_factory.mktemp(f"report-{language}")
    settings = Settings(database_url=f"sqlite:///{tmp / 'smsops.db'}", outbox=tmp / "out.jsonl")
    ctx = Context.open(settings, gateway_factory=lambda s: RefusingOutbox(s.outbox, lambda b: b["phone"].isin([e164(7), e164(8)])))
    add_users(ctx, [mobile(i) for i in range(1, 21)] + ["03-1234-5678", None])
    accounts.add_tickets(ctx, 40)
    created = dl.create_bulk(ctx, dl.preview_bulk(ctx, ["冬のセール開始！", "詳細はWebで"]))
    dispatch(ctx, dl.send_individual(ctx, mobile(99), ["個別", "二通目"]).delivery_id)
    dispatch(ctx, dl.send_individual(ctx, mobile(98), ["個別", "二通目"]).delivery_id)
    dispatch(ctx, created.delivery_id)
    ctx.close()
    env = {
        **os.environ,
        "SMSOPS_DATABASE_URL": settings.database_url,
        "SMSOPS_OUTBOX": str(settings.outbox),
        "SMSOPS_LANG": language,
    }
    html = tmp / "mail" / "report.html"
    cmd = [sys.executable, "-m", "smsops.cli", "report", str(created.delivery_id)]
    done = subprocess.run(
        [*cmd, "--html", str(html), "--json"],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return {
        "json": json.loads(done.stdout),
        "path": html,
        "html": html.read_text(encoding="utf-8"),
        "delivery_id": created.delivery_id,
        "tmp": tmp,
        "language": language,
    }


def test_report_html_is_self_contained_with_its_plots_and_masked_numbers(report):
    html = report["html"]
    assert report["json"]["delivery_id"] == report["delivery_id"]
    assert report["json"]["html"] == str(report["path"].resolve())
    images = DATA_URI.findall(html)
    assert len(images) == report["json"]["images"] == 2  # status and error breakdowns
    for payload in images:
        assert base64.b64decode(payload).startswith(b"\x89PNG\r\n\x1a\n")
    # nothing to fetch: no scripts, no remote images or stylesheets
    assert "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)
    if report["language"] == "en":
        assert f"Delivery {report['delivery_id']}</strong> (bulk) is <strong>partially_sent" in html
        assert ">Status of every message<" in html
    else:  # #15: headings, the headline and the failure explanations in Japanese
        assert f"配信 {report['delivery_id']}</strong>（bulk）は <strong>partially_sent" in html
        assert "宛先 20件 × メッセージ 2通" in html
        assert re.search(r"使用チケット \d+枚", html)
        for heading in ("SMS配信レポート", "すべてのメッセージの状態", "メッセージが失敗した理由"):
            assert f">{heading}<" in html
        assert "送信時にチケット残高が尽きた（R10）" in html  # why messages failed
        assert "missing from font" not in html  # matplotlib drew every glyph (no tofu)
        assert "日本語フォントが見つかりません" not in html  # Noto Sans CJK JP was found
    assert "rejected_by_carrier" in html and "insufficient_tickets" in html
    assert "090-****-0007" in html  # a failed number, masked
    assert not UNMASKED.search(DATA_URI.sub("", html))
    assert "print(" not in html and "import " not in html  # code cells are hidden


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on local files only: no network, no profile, no background work."""
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    return subprocess.run(
        [
            CHROMIUM or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # any remote fetch would fail
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_html_renders_its_tables_and_images_in_chromium(report):
    tmp, url = report["tmp"], report["path"].resolve().as_uri()
    shot = tmp / "report.png"
    done = chromium(tmp, f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert shot.exists(), done.stderr
    if report["language"] == "ja" and os.environ.get("SMSOPS_REPORT_SHOT"):
        shutil.copy(shot, os.environ["SMSOPS_REPORT_SHOT"])  # for a person to look at (#15)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2000, 1280)
    not_white = (pixels < 0.9).any(axis=2).mean()
    assert 0.02 < not_white < 0.9  # text, tables and plots on a white page
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    # the status plot was decoded and drawn: a block of its "sent" green is on screen
    assert (np.abs(pixels - GREEN).max(axis=2) < 0.02).sum() > 5_000

    dom = chromium(tmp, "--dump-dom", url).stdout
    assert dom.count("<table") >= 3  # overview, failed pairs, detail
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', dom)) == 2
    assert "090-****-0008" in dom and not UNMASKED.search(DATA_URI.sub("", dom))
