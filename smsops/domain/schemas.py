"""pandera contracts of the frames that cross module boundaries."""
# mypy: disable-error-code="valid-type"

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
from pandera.errors import SchemaErrors
from pandera.typing import Series

from smsops.domain.vocabulary import Exclusion, ItemError, ItemStatus
from smsops.errors import InputError, Problem

STRING = pd.StringDtype("pyarrow")
USER_IDS = pd.ArrowDtype(pa_arrow.list_(pa_arrow.large_string()))

EXCLUSION_REASONS = tuple(Exclusion)


class Users(pa.DataFrameModel):
    """A user table: ``user_id`` and ``phone`` required, any other column kept. Row
    order is user order (R5, R10)."""

    user_id: Series[STRING] = pa.Field(nullable=False, unique=True, str_length={"min_value": 1})
    phone: Series[STRING] = pa.Field(nullable=True)

    class Config:
        strict = False
        coerce = True


class PhoneClassification(pa.DataFrameModel):
    e164: Series[STRING] = pa.Field(nullable=True, str_matches=r"^\+[1-9]\d{6,16}$")
    national: Series[STRING] = pa.Field(nullable=True, str_matches=r"^0\d+$")
    mobile: Series[bool]
    reason: Series[STRING] = pa.Field(
        nullable=True, isin=[Exclusion.NO_PHONE, Exclusion.MALFORMED, Exclusion.NOT_MOBILE]
    )


class Recipients(pa.DataFrameModel):
    """One row per unique mobile number, in user order."""

    seq: Series[int] = pa.Field(ge=1, unique=True)
    phone: Series[STRING] = pa.Field(unique=True, str_matches=r"^\+81[6-9]0\d{8}$")
    user_id: Series[STRING]
    user_ids: Series[USER_IDS]  # the user ids sharing the number, first is user_id (R5)


class Exclusions(pa.DataFrameModel):
    user_id: Series[STRING]
    reason: Series[STRING] = pa.Field(isin=list(EXCLUSION_REASONS))
    phone: Series[STRING] = pa.Field(nullable=True)
    duplicate_of: Series[STRING] = pa.Field(nullable=True)


class SendPlan(pa.DataFrameModel):
    """(recipient, message) pairs in send order with their allocation (R10)."""

    seq: Series[int] = pa.Field(ge=1)
    message_no: Series[int] = pa.Field(isin=[1, 2])
    status: Series[STRING] = pa.Field(isin=[ItemStatus.SENT, ItemError.INSUFFICIENT_TICKETS])


def validate(model: type[pa.DataFrameModel], frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Validate lazily; on failure raise one :class:`InputError` listing every bad cell.

    Row numbers are 1-based data rows (``row 1`` is the first line after the header).
    """
    try:
        return model.validate(frame, lazy=True)
    except SchemaErrors as exc:
        raise InputError(source, problems_from(exc, frame)) from None


def problems_from(exc: SchemaErrors, frame: pd.DataFrame) -> list[Problem]:
    """Turn pandera's failure cases into problems named by row and column."""
    cases = exc.failure_cases
    positions = pd.Series(range(1, len(frame) + 1), index=frame.index)
    problems = []
    for case in cases.itertuples(index=False):
        index = getattr(case, "index", None)
        row = None
        if index is not None and not pd.isna(index) and index in positions.index:
            row = int(positions.loc[index])
        check = str(case.check)
        column = case.column if isinstance(case.column, str) else None
        value = case.failure_case
        problems.append(Problem(row, column, _describe(check, value), value))
    problems.sort(key=lambda p: (p.row is None, p.row or 0, p.column or ""))
    return problems


def _describe(check: str, value: object) -> str:
    if check == "not_nullable":
        return "is empty (required)"
    if check == "field_uniqueness":
        return f"{value!r} appears more than once (must be unique)"
    if check.startswith("str_length"):
        return "is empty (required)"
    if check == "column_in_dataframe":
        return f"required column {value!r} is missing"
    return f"{value!r} fails {check}"
