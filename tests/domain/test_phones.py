"""R3: only Japanese mobile numbers, read from what real user tables contain."""

from __future__ import annotations

import unicodedata

import pandas as pd
import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smsops import classify_phones, mask_phone
from smsops.domain.phones import reference_classify
from smsops.domain.schemas import PhoneClassification


def classify_one(value: object) -> dict:
    return classify_phones(pd.Series([value], dtype=object)).iloc[0].to_dict()


@pytest.mark.parametrize(
    "raw",
    [
        "090-1234-5678",
        "09012345678",
        "090 1234 5678",
        "０９０－１２３４－５６７８",  # full-width digits and hyphens
        "０９０ １２３４ ５６７８",  # ideographic space
        "090ー1234ー5678",  # katakana prolonged sound mark typed as a hyphen
        "(090)1234-5678",
        "（０９０）１２３４－５６７８",
        "+81 90 1234 5678",
        "+81-90-1234-5678",
        "+81 (0)90 1234 5678",
        "81-90-1234-5678",
        "9012345678",  # leading 0 eaten by a spreadsheet
        "  090.1234.5678  ",
        "010-81-90-1234-5678",  # dialled from Japan with the international prefix
    ],
)
def test_r3_accepts_what_real_tables_contain(raw):
    row = classify_one(raw)
    assert row["mobile"] is True or row["mobile"] == True  # noqa: E712 - numpy bool
    assert row["e164"] == "+819012345678"
    assert row["national"] == "09012345678"
    assert pd.isna(row["reason"])


@pytest.mark.parametrize(
    "raw",
    [
        "0081-90-1234-5678",
        "00819012345678",
        "0081 (0)90-1234-5678",
        "0081-090-1234-5678",
        "00 81 90 1234 5678",
        "００８１－９０－１２３４－５６７８",
    ],
)
def test_r3_reads_the_0081_international_form_as_plus_81(raw):
    # phonenumbers reads 0081… as a national number of no type (+8100819…); see phones.py
    row = classify_one(raw)
    assert (row["e164"], row["national"], bool(row["mobile"])) == (
        "+819012345678",
        "09012345678",
        True,
    )
    assert reference_classify(raw) == ("+819012345678", "09012345678", True, None)


def test_r3_0081_landline_is_a_landline_not_a_garbage_number():
    assert classify_one("0081-3-1234-5678")["e164"] == "+81312345678"
    assert classify_one("0081-3-1234-5678")["reason"] == "not_mobile"
    # other 00 prefixes stay what phonenumbers says: 0037… is a Japanese toll-free number
    assert classify_one("0037-12-345678")["e164"] == reference_classify("0037-12-345678")[0]


@pytest.mark.parametrize("prefix", ["060", "070", "080", "090"])
def test_r3_mobile_prefixes(prefix):
    assert bool(classify_one(f"{prefix}-5555-0101")["mobile"])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("03-1234-5678", "not_mobile"),  # Tokyo landline
        ("0466-12-3456", "not_mobile"),  # landline, 4-digit area code
        ("0800-123-4567", "not_mobile"),  # toll-free: 080 but not mobile
        ("0120-123-456", "not_mobile"),  # toll-free
        ("050-1234-5678", "not_mobile"),  # IP phone
        ("090-0123-4567", "not_mobile"),  # unallocated 090-0 block
        ("080-0123-4567", "not_mobile"),  # unallocated 080-0 block
        ("+1 415 555 2671", "not_mobile"),  # foreign
        ("090-1234-ABCD", "malformed"),  # letters are never vanity digits
        ("tel:090-1234-5678", "malformed"),
        ("なし", "no_phone"),
        ("090-123", "malformed"),  # too short
        ("12", "malformed"),
        ("+81+90-1234-5678", "malformed"),
        ("090-1234-5678-1234-5678-99", "malformed"),  # too long
        ("", "no_phone"),
        ("   ", "no_phone"),
        (None, "no_phone"),
        (float("nan"), "no_phone"),
    ],
)
def test_r3_excluded_numbers_get_a_reason(raw, reason):
    row = classify_one(raw)
    assert not row["mobile"]
    assert row["reason"] == reason


@pytest.mark.parametrize("raw", ["n/a", "N/A", "#N/A", "NULL", "なし", "無し", "不明", "－", " - "])
def test_r3_no_phone_said_in_words_is_no_phone_not_malformed(raw):
    assert classify_phones(pd.Series([raw]))["reason"].tolist() == ["no_phone"]
    assert reference_classify(raw)[3] == "no_phone"


def test_r3_keeps_index_and_contract_columns():
    raw = pd.Series(["090-1234-5678", "03-1234-5678", None], index=[10, 20, 30])
    out = classify_phones(raw)
    assert list(out.index) == [10, 20, 30]
    assert list(out.columns) == ["e164", "national", "mobile", "reason"]
    PhoneClassification.validate(out)
    assert out["mobile"].tolist() == [True, False, False]
    assert out.loc[20, "e164"] == "+81312345678"  # landlines keep their number for reports


def test_r3_numbers_written_out_as_floats():
    # A float column with a non-integer in it must not crash the whole column.
    mixed = classify_phones(pd.Series([9012345678.0, 3.5, None]))
    assert mixed["reason"].tolist()[1:] == ["malformed", "no_phone"]
    assert mixed.loc[0, "e164"] == "+819012345678"
    # ... and as text, "9012345678.0" is the number, not 90123456780.
    text = classify_phones(pd.Series(["9012345678.0", "09012345678.00", "3.50"]))
    assert text["e164"].tolist()[:2] == ["+819012345678"] * 2
    assert text.loc[2, "reason"] == "malformed"
    assert reference_classify("9012345678.0")[0] == "+819012345678"


def test_r3_numeric_column_from_a_spreadsheet():
    out = classify_phones(pd.Series([9012345678.0, float("nan")]))
    assert out["e164"].iloc[0] == "+819012345678"
    assert out["reason"].iloc[1] == "no_phone"


@pytest.mark.parametrize("chunks", [[], [["09012345678"], ["03-1234-5678", None]]])
def test_r3_arrow_backed_columns_in_any_number_of_chunks(chunks):
    # What a header-only CSV (no chunk) or a concatenated table (several) hands over.
    import pyarrow as pa

    arrays = [pa.array(c, pa.large_string()) for c in chunks]
    raw = pd.Series(pd.arrays.ArrowExtensionArray(pa.chunked_array(arrays, pa.large_string())))
    out = classify_phones(raw)
    expected = [None, "not_mobile", "no_phone"] if chunks else []
    assert [None if pd.isna(r) else r for r in out["reason"]] == expected


def test_r3_mobile_rule_comes_from_phonenumbers_metadata():
    """Every number phonenumbers calls a JP mobile in its own examples is mobile here."""
    example = phonenumbers.example_number_for_type("JP", phonenumbers.PhoneNumberType.MOBILE)
    national = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.NATIONAL)
    assert bool(classify_one(national)["mobile"])
    for kind in (
        phonenumbers.PhoneNumberType.TOLL_FREE,
        phonenumbers.PhoneNumberType.FIXED_LINE,
        phonenumbers.PhoneNumberType.VOIP,
        phonenumbers.PhoneNumberType.PAGER,
    ):
        other = phonenumbers.example_number_for_type("JP", kind)
        text = phonenumbers.format_number(other, phonenumbers.PhoneNumberFormat.NATIONAL)
        assert classify_one(text)["reason"] == "not_mobile", text


def _same(vectorized: dict, reference: tuple) -> bool:
    got = tuple(
        None if (not isinstance(v, bool) and pd.isna(v)) else v
        for v in (vectorized["e164"], vectorized["national"])
    )
    return (
        got == reference[:2]
        and bool(vectorized["mobile"]) == reference[2]
        and (
            (pd.isna(vectorized["reason"]) and reference[3] is None)
            or vectorized["reason"] == reference[3]
        )
    )


# Well-formed Japanese numbers: any 9-10 digit national number behind the usual prefixes
# and separators, including full-width forms.
_nsn = st.from_regex(r"\A[1-9][0-9]{8,9}\Z")
_formats = st.sampled_from(
    [
        *("0{n}", "+81{n}", "+81 {n}", "81{n}", "{n}", "0{n} ", "+81-0{n}"),
        *("0081{n}", "0081-{n}", "00 81 (0){n}", "010-81-{n}"),  # 00 81 and 010 81
    ]
)


def as_phonenumbers_reads(value: str) -> str:
    """``value`` as phonenumbers must be given it to agree with R3: smsops reads ``00 81…``
    as ``+81…`` where phonenumbers knows only 010 (the one documented divergence)."""
    compact = "".join(ch for ch in unicodedata.normalize("NFKC", value) if ch.isdigit())
    return "+" + compact[2:] if compact.startswith("0081") and "+" not in value else value


@st.composite
def jp_numbers(draw) -> str:
    nsn = draw(_nsn)
    # Put separators between digit groups the way people do.
    cut1 = draw(st.integers(1, 4))
    cut2 = draw(st.integers(cut1 + 1, len(nsn) - 1))
    sep = draw(st.sampled_from(["", "-", " ", "－", "ー", "."]))
    grouped = sep.join([nsn[:cut1], nsn[cut1:cut2], nsn[cut2:]])
    text = draw(_formats).format(n=grouped)
    if draw(st.booleans()):
        text = text.translate(str.maketrans("0123456789+-", "０１２３４５６７８９＋－"))
    return text


@settings(max_examples=400, deadline=None)
@given(st.lists(jp_numbers(), min_size=1, max_size=30))
def test_r3_agrees_with_phonenumbers_on_generated_jp_numbers(values):
    out = classify_phones(pd.Series(values, dtype=object))
    for (_, row), value in zip(out.iterrows(), values, strict=True):
        ref = reference_classify(value)
        assert _same(row.to_dict(), ref), (value, row.to_dict(), ref)
        # and with phonenumbers' own verdict on the mobile flag
        try:
            num = phonenumbers.parse(as_phonenumbers_reads(value), "JP")
        except phonenumbers.NumberParseException:  # e.g. 010… read as an international prefix
            assert not row["mobile"]
            continue
        is_mobile = phonenumbers.number_type(num) == phonenumbers.PhoneNumberType.MOBILE
        assert bool(row["mobile"]) == (is_mobile and num.country_code == 81)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=25),
            st.none(),
            st.text(alphabet="0123456789+-() ０１２３４５６７８９－ー", max_size=20),
        ),
        max_size=20,
    )
)
def test_r3_never_raises_and_agrees_on_any_string(values):
    out = classify_phones(pd.Series(values, dtype=object))
    assert len(out) == len(values)
    for (_, row), value in zip(out.iterrows(), values, strict=True):
        assert _same(row.to_dict(), reference_classify(value)), value


# One mobile number in every form R3 reads. The opt-out list (R16) and log masking read
# the same forms, so their tests draw from here too.
_MOBILE_FORMS = (
    "0{a}{s}{b}{s}{c}",  # 090-1234-5678
    "(0{a}){s}{b}{s}{c}",  # (090)1234-5678
    "{a}{s}{b}{s}{c}",  # 9012345678: the leading 0 eaten by a spreadsheet
    "+81{s}{a}{s}{b}{s}{c}",  # +81 90 1234 5678
    "+81{s}(0){a}{s}{b}{s}{c}",  # +81 (0)90 1234 5678
    "+81{s}0{a}{s}{b}{s}{c}",  # +81-090-1234-5678
    "81{s}{a}{s}{b}{s}{c}",  # 81-90-1234-5678
    "0081{s}{a}{s}{b}{s}{c}",  # 0081-90-1234-5678
    "00{s}81{s}(0){a}{s}{b}{s}{c}",  # 00 81 (0)90 1234 5678
    "010{s}81{s}{a}{s}{b}{s}{c}",  # 010-81-90-1234-5678, dialled out of Japan and back
    "0{a} - {b} - {c}",  # a run of separators
)
_SEPARATORS = ["", "-", " ", ".", "ー", "－", "‐", "−", "–", "\u3000"]
_FULL_WIDTH = str.maketrans("0123456789+-()", "０１２３４５６７８９＋－（）")


@st.composite
def mobile_forms(draw, nsn: str | None = None) -> tuple[str, str]:
    """``(text, e164)``: a Japanese mobile (``nsn`` or a random one) written one way."""
    if nsn is None:
        nsn = draw(st.from_regex(r"\A[6-9]0[1-9][0-9]{7}\Z"))
    a, b, c = nsn[:2], nsn[2:6], nsn[6:]
    text = draw(st.sampled_from(_MOBILE_FORMS)).format(
        a=a, b=b, c=c, s=draw(st.sampled_from(_SEPARATORS))
    )
    if draw(st.booleans()):
        text = text.translate(_FULL_WIDTH)
    return text, f"+81{nsn}"


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_r3_every_written_form_of_a_mobile_reads_as_that_mobile(data):
    nsn = data.draw(st.from_regex(r"\A[6-9]0[1-9][0-9]{7}\Z"))
    forms = [data.draw(mobile_forms(nsn)) for _ in range(5)]
    out = classify_phones(pd.Series([text for text, _ in forms], dtype=object))
    assert out["e164"].tolist() == [f"+81{nsn}"] * 5, forms
    assert out["mobile"].all(), forms


def test_mask_phone_hides_the_middle():
    assert mask_phone("+819012345678") == "090-****-5678"
    assert mask_phone("09012345678") == "090-****-5678"
    assert mask_phone(None) == ""
