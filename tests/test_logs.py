"""Phone numbers are personal data: logs and Prefect output mask them."""

from __future__ import annotations

import logging
import re
import unicodedata

import pytest
from domain.test_phones import mobile_forms
from hypothesis import given, settings

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
    ("text", "masked"),
    [
        ("opt-out '0081-90-1000-0002' refused", "opt-out '090-****-0002' refused"),
        ("00819010000002", "090-****-0002"),
        ("0081 (0)90-1000-0002", "090-****-0002"),
        ("00 81 90 1000 0002", "090-****-0002"),
        ("+81-090-1234-5678", "090-****-5678"),
        ("010-81-90-1234-5678", "090-****-5678"),
        ("090/1234/5678", "090-****-5678"),
        ("090_1234_5678", "090-****-5678"),
        ("090 - 1234 - 5678", "***-****-5678"),
        ("0081-3-1234-5678 is a landline", "***-****-5678 is a landline"),
        ("+1 212 555 0100", "***-****-0100"),
        ("+1 (212) 555-0100 replied", "***-****-0100 replied"),
        ("+44 20 7946 0958", "***-****-0958"),
        ("0044 20 7946 0958", "***-****-0958"),
        ("+12125550100", "***-****-0100"),
        ("212.555.0100 at 2026-12-01 10:00", "***-****-0100 at 2026-12-01 10:00"),
    ],
)
def test_masking_catches_0081_odd_separators_and_foreign_numbers(text, masked):
    assert mask_text(text) == masked


@settings(max_examples=300, deadline=None)
@given(mobile_forms())
def test_masking_hides_every_form_r3_reads(form):
    text, e164 = form
    masked = mask_text(f"row: {text!r} refused")
    shown = re.sub(r"\D", "", unicodedata.normalize("NFKC", masked))
    head, tail = "0" + e164[3:5], e164[-4:]  # 090, 5678
    assert shown in (head + tail, tail), (text, masked)


@pytest.mark.parametrize(
    "text",
    [
        "delivery 12 sent 1,550 of 20261125 pairs in 3.2 s",
        "scheduled 2026-12-01T10:00:00+09:00, logged 2026-11-25 14:48:23",
        "free dial 0120-123-456",
        # guards for the looser "looks like a phone" reading (these never were masked)
        "ticket 12 2026-12-01 10:00",
        "'+10000-01-01' and 0001-01-01 00:00 are out of range",
        "at 01/12/2026 10:00 and 2026/12/01 10:00:00",
        "key smsops-12-345678-1, gateway ref 3f2a1b4c-1234-5678-9abc-def123456789",
        "took 1764050000.123456 s; kannel at 192.168.100.200:13013",
        "SMS goes to 060/070/080/090 numbers only",
        "seqs 1 2 3 4 5 6 7 8 9 10 11",
        "epoch 1764050000, item 12345678901",
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
