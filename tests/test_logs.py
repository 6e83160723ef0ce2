"""Phone numbers are personal data: logs and Prefect output mask them."""

from __future__ import annotations

import logging

import pytest

from smsops.logs import MaskPhones, install_masking, mask_text


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("sent to +819012345678", "sent to 090-****-5678"),
        ("sent to 090-1234-5678.", "sent to 090-****-5678."),
        ("sent to 09012345678", "sent to 090-****-5678"),
        ("+81 90 1234 5678 opted out", "090-****-5678 opted out"),
        ("landline 03-1234-5678", "landline ***-****-5678"),
        # every form R3 accepts
        ("０９０－１２３４－５６７８", "090-****-5678"),
        ("eaten zero 9012345678", "eaten zero 090-****-5678"),
        ("81-90-1234-5678", "090-****-5678"),
        ("(090)1234-5678", "090-****-5678"),
        ("090.1234.5678", "090-****-5678"),
        ("090ー1234ー5678", "090-****-5678"),
        ("+81 (0) 90-1234-5678", "090-****-5678"),
        ("delivery 12 090-1234-5678", "delivery 12 090-****-5678"),
    ],
)
def test_phone_numbers_are_masked_in_text(text, masked):
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "delivery 12 sent 1,550 of 20261125 pairs in 3.2 s",
        "scheduled 2026-12-01T10:00:00+09:00, logged 2026-11-25 14:48:23",
        "free dial 0120-123-456",
    ],
)
def test_other_numbers_are_left_alone(text):
    assert mask_text(text) == text


def test_tracebacks_are_masked_too(caplog):
    logger = logging.getLogger("smsops.test.exc")
    logger.addFilter(MaskPhones())
    with caplog.at_level(logging.ERROR, logger="smsops.test.exc"):
        try:
            raise ValueError("bad number 090-1234-5678")
        except ValueError:
            logger.exception("failed")
    text = logging.Formatter().format(caplog.records[-1])
    assert "ValueError: bad number 090-****-5678" in text and "1234" not in text


def test_smsops_errors_mask_the_numbers_they_quote():
    from smsops.errors import InputError, Problem, RuleError

    err = RuleError("R3", "'090-1234-5678 内線12' is not a Japanese mobile", phone="09012345678")
    assert "1234" not in str(err) and err.details["phone"] == "090-****-5678"
    bad = InputError("users.csv", [Problem(1, "phone", "found: '1', '09012345678'")])
    assert "1234" not in bad.message and "1234" not in str(bad.to_dict())


def test_the_filter_masks_formatted_records(caplog):
    install_masking()
    logger = logging.getLogger("smsops.test")
    logger.addFilter(MaskPhones())
    with caplog.at_level(logging.INFO, logger="smsops.test"):
        logger.info("sending to %s and %s", "+819012345678", "080-1111-2222")
    assert caplog.records[-1].getMessage() == "sending to 090-****-5678 and 080-****-2222"
