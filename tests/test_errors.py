"""Errors travel (STYLE.md): through Prefect result persistence and process pools they
must come back as the same type with the same line."""

from __future__ import annotations

import pickle

import pytest

from smsops.domain.query import QueryError
from smsops.errors import DeliveryFailed, PathError


@pytest.mark.parametrize(
    "error",
    [
        DeliveryFailed("delivery 7 failed: sent 0, errors 2", delivery_id=7, sent=0),
        PathError("'/etc/passwd' is outside the import root 'data'"),
        QueryError("'tags.__class__': names starting with '__' are not allowed"),
    ],
)
def test_errors_pickle_to_the_same_type_line_and_details(error):
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error)
    assert str(again) == str(error) and again.to_dict() == error.to_dict()
