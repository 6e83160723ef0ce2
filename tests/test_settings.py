"""Settings reach every front door with their secrets (issue 17: the environment, a
`.env` file, a Prefect Secret block), and never show them."""

from __future__ import annotations

import pytest

from smsops.settings import Settings


def test_a_dotenv_file_in_the_working_directory_supplies_secrets(tmp_path, monkeypatch):
    for name in ("SMSOPS_KANNEL_PASSWORD", "SMSOPS_RECEIVER_TOKEN", "SMSOPS_GATEWAY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "SMSOPS_GATEWAY=kannel\nSMSOPS_KANNEL_PASSWORD=s3cret-from-dotenv\n"
        "SMSOPS_RECEIVER_TOKEN=token-from-dotenv-0123456789\n",
        encoding="utf-8",
    )
    settings = Settings()
    assert settings.gateway == "kannel"
    assert settings.kannel_password is not None
    assert settings.kannel_password.get_secret_value() == "s3cret-from-dotenv"
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.model_dump_json()


def test_the_environment_wins_over_the_dotenv_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SMSOPS_CHUNK_SIZE=5\n", encoding="utf-8")
    monkeypatch.setenv("SMSOPS_CHUNK_SIZE", "9")
    assert Settings().chunk_size == 9


@pytest.mark.parametrize("line", ["SMSOPS_CHUNK_SIZE=0", "SMSOPS_GATEWAY=bogus"])
def test_a_bad_value_in_the_dotenv_file_is_one_line_naming_the_variable(
    tmp_path, monkeypatch, line
):
    monkeypatch.delenv("SMSOPS_CHUNK_SIZE", raising=False)
    monkeypatch.delenv("SMSOPS_GATEWAY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(line + "\n", encoding="utf-8")
    from smsops.errors import ConfigError

    with pytest.raises(ConfigError, match=line.split("=")[0]):
        Settings()
