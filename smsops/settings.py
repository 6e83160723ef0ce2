"""Settings, read once from ``SMSOPS_*`` environment variables at a front door and passed
down (no import-time global, so tests build their own)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from smsops.errors import ConfigError, Text
from smsops.i18n import N_


class Settings(BaseSettings):
    """Everything configurable about one smsops installation."""

    # the environment first, then a `.env` file in the working directory (where a deployment
    # keeps its credentials beside the code, never in flow parameters)
    model_config = SettingsConfigDict(
        env_prefix="SMSOPS_", extra="ignore", env_file=".env", env_file_encoding="utf-8"
    )

    def __init__(self, **values: Any) -> None:
        """Read the settings; a bad value is one clear line naming the variable."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(_explain(exc)) from None

    database_url: str = "sqlite:///data/smsops.db"
    gateway: Literal["outbox", "kannel"] = "outbox"
    outbox: Path = Path("data/outbox.jsonl")

    kannel_url: str = "http://127.0.0.1:13013/cgi-bin/sendsms"
    kannel_user: str | None = None
    kannel_password: SecretStr | None = None
    kannel_from: str | None = None
    # or the name of a Prefect Secret block that holds the password (Prefect deployments)
    kannel_password_block: str | None = None
    # where Kannel sends delivery reports: `smsops receiver`'s /dlr, e.g.
    # http://127.0.0.1:13080/dlr (None: no reports are asked for)
    kannel_dlr_url: str | None = None
    # how long the SMSC keeps trying a message (Kannel's X-Kannel-Validity, in minutes):
    # one held for a switched-off phone is dropped rather than delivered at night
    # (None: the SMSC's own default)
    kannel_validity_minutes: int | None = Field(None, gt=0)
    # requests to Kannel in flight at once (and connections kept open to it)
    kannel_concurrency: int = Field(4, ge=1, le=64)
    # the shared secret every callback to `smsops receiver` (/dlr, /mo) carries as
    # ?token=…; the receiver refuses to start without it
    receiver_token: SecretStr | None = None
    # where `smsops receiver` and the receiver of `smsops serve` listen
    receiver_host: str = "127.0.0.1"
    receiver_port: int = Field(13080, ge=0, le=65535)
    # flows read files only under this folder (their parameters may come from anyone who
    # reaches the Prefect API); the CLI reads what its user can
    import_root: Path = Path("data")
    # the drop folder the import-drops flow watches (#11): a path or an fsspec URL
    # (s3://bucket/drops); set here, not in flow parameters, like every location
    drops: str = "data/drops"
    # seconds between the import-drops flow's passes over it under `smsops serve`
    drops_interval: float = Field(60.0, gt=0)
    rate_limit: float | None = Field(None, gt=0, description="messages per second, None = no cap")

    # (recipient, message) pairs sent per gateway call and recorded per transaction
    chunk_size: int = Field(10_000, ge=1)
    # rows turned into Python values and written per statement by `users import` and
    # `bulk create`: what they hold besides the columnar table grows with this, not with
    # the table (#12)
    write_batch: int = Field(50_000, ge=1)
    # a sending process that has not shown life for this long is presumed dead
    lease_seconds: float = Field(60.0, gt=0)
    # a delivery paused because its gateway was down is tried again after this long,
    # doubling each time it pauses again (at most an hour)
    pause_seconds: float = Field(30.0, gt=0)
    # SQLite: how long a writer waits for another process's lock before it gives up
    busy_timeout: float = Field(60.0, gt=0)


# pydantic's messages for the values a setting gets wrong, as catalog entries (#15): each
# is used only when it reads exactly as pydantic's own, so the English line never changes
_PYDANTIC = {
    "literal_error": N_("Input should be {expected}"),
    "greater_than": N_("Input should be greater than {gt}"),
    "greater_than_equal": N_("Input should be greater than or equal to {ge}"),
    "less_than_equal": N_("Input should be less than or equal to {le}"),
    "int_parsing": N_("Input should be a valid integer, unable to parse string as an integer"),
    "int_from_float": N_("Input should be a valid integer, got a number with a fractional part"),
    "float_parsing": N_("Input should be a valid number, unable to parse string as a number"),
    "bool_parsing": N_("Input should be a valid boolean, unable to interpret input"),
}


def _choices(expected: str) -> str:
    """pydantic's list of allowed values (``'a', 'b' or 'c'``) as a Text, so that its
    English "or" and commas are the reader's too: ``'a'、'b'、'c'`` in Japanese."""
    head, sep, last = expected.rpartition(" or ")
    if not sep:
        return expected
    first = Text.joined([Text("{v}", v=v) for v in head.split(", ")], ", ")
    return Text(N_("{choices} or {last}"), choices=first, last=Text("{v}", v=last))


def _explain(exc: ValidationError) -> Text:
    """One clause per bad setting, naming the variable (a password's value never shown)."""
    parts = []
    for e in exc.errors(include_url=False):
        name = "SMSOPS_" + "_".join(str(p) for p in e["loc"]).upper()
        shown = "" if "PASSWORD" in name else f"={e.get('input')!r}"
        problem: str = e["msg"]
        template = _PYDANTIC.get(e["type"])
        if template is not None:
            with contextlib.suppress(KeyError, IndexError):
                # pydantic writes a bound of 0.0 as 0
                ctx = {
                    k: int(v) if isinstance(v, float) and v.is_integer() else v
                    for k, v in e.get("ctx", {}).items()
                }
                if e["type"] == "literal_error":
                    ctx["expected"] = _choices(str(ctx["expected"]))
                said = Text(template, **ctx)
                problem = said if said == e["msg"] else problem
        parts.append(Text(N_("{name}{shown}: {problem}"), name=name, shown=shown, problem=problem))
    return Text.joined(parts)
