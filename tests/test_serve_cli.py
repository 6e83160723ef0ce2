"""``smsops serve``'s refusals (#11 part 3): the receiver it hosts needs its token and its
port; either missing is one line and exit 1, before any server starts."""

from __future__ import annotations

import socket
from pathlib import Path


def test_serve_without_a_receiver_token_is_one_line_naming_the_variable_and_the_way_out(
    cli, monkeypatch
):
    monkeypatch.delenv("SMSOPS_RECEIVER_TOKEN", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(cli.tmp / "prefect"))
    refused = cli("serve", code=1)
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "SMSOPS_RECEIVER_TOKEN" in lines[0]
    assert "--no-receiver" in lines[0]
    assert not (cli.tmp / "prefect").exists()  # no Prefect server was started


def test_serve_with_the_receiver_port_taken_is_one_line_naming_it(cli, monkeypatch):
    monkeypatch.setenv("SMSOPS_RECEIVER_TOKEN", "serve-cli-test-token")
    monkeypatch.setenv("PREFECT_HOME", str(cli.tmp / "prefect"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("SMSOPS_RECEIVER_PORT", str(port))
        refused = cli("serve", "--json", code=1)
    assert f"cannot listen on 127.0.0.1:{port}" in refused.stderr
    assert not Path(cli.tmp / "prefect").exists()


def test_serve_receiver_port_setting_out_of_range_is_refused(cli, monkeypatch):
    monkeypatch.setenv("SMSOPS_RECEIVER_PORT", "70000")
    refused = cli("serve", code=1)
    assert "SMSOPS_RECEIVER_PORT" in refused.stderr
