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
    ],
)
def test_phone_numbers_are_masked_in_text(text, masked):
    assert mask_text(text) == masked


def test_other_numbers_are_left_alone():
    text = "delivery 12 sent 1,550 of 20261125 pairs in 3.2 s"
    assert mask_text(text) == text


def test_the_filter_masks_formatted_records(caplog):
    install_masking()
    logger = logging.getLogger("smsops.test")
    logger.addFilter(MaskPhones())
    with caplog.at_level(logging.INFO, logger="smsops.test"):
        logger.info("sending to %s and %s", "+819012345678", "080-1111-2222")
    assert caplog.records[-1].getMessage() == "sending to 090-****-5678 and 080-****-2222"
