"""Classify raw phone strings as Japanese mobile numbers, vectorized (R3).

The rule is not hand-written: the patterns and lengths come from phonenumbers' own
metadata for JP, applied in the order ``phonenumbers.number_type`` applies them, so the
vectorized answer agrees with per-row ``phonenumbers.parse(raw, "JP")``. Shapes that the
vectorized path does not model (foreign ``+cc`` numbers, ``00``/``010`` international
prefixes, odd lengths) fall back to phonenumbers row by row; real user tables have few.

One deliberate divergence from phonenumbers: ``00 81 …`` (``0081-90-1234-5678``,
``0081 (0)90…``), the international form most of the world dials, reads as ``+81 …``.
phonenumbers knows only Japan's own international prefix 010 and takes ``0081…`` for a
national number ``0081…`` of no type, which would leave such a user unreachable and,
worse, an opt-out written that way matching nobody (R16). No Japanese number is dialled
``0081…`` at home, so nothing real is lost. Other ``00`` prefixes are left as they are:
``0037``, ``0066``, ``0078``… are Japanese toll-free numbers, not countries.

Reasons, in the order they are decided:

* ``no_phone``  – missing or blank.
* ``malformed`` – characters that are not digits or separators (letters are never read as
  vanity digits), more than one ``+``, or a digit count no phone number can have.
* ``not_mobile`` – a possible phone number that is not a Japanese mobile: landlines,
  0800/0120 toll-free, 050 IP phones, unallocated blocks such as 090-0xxx, foreign numbers.
"""

from __future__ import annotations

import os
import re
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import NumberParseException, PhoneNumberType

from smsops.domain.vocabulary import Exclusion

REGION = "JP"

NO_PHONE = Exclusion.NO_PHONE
MALFORMED = Exclusion.MALFORMED
NOT_MOBILE = Exclusion.NOT_MOBILE

STRING = pd.StringDtype("pyarrow")

# What people write in a phone cell to say there is none (compared after NFKC, trimmed
# and lower-cased): pandas' own missing-value markers, and the Japanese ones. These are
# ``no_phone``, not ``malformed``, however the table was read (the CLI keeps text as it
# is; ``pd.read_csv`` turns "n/a" into NaN).
NO_PHONE_WORDS = frozenset(
    {"#n/a", "#n/a n/a", "#na", "<na>", "n/a", "na", "nan", "-nan", "null", "none", "nil"}
    | {"-", "--", "ー", "なし", "無し", "ナシ", "不明", "未登録", "未入力", "該当なし"}
)

# Separators people and spreadsheets put in numbers. After NFKC (full-width → ASCII)
# the remaining ones are Unicode dashes and the katakana prolonged sound mark, which
# Japanese users type as a hyphen (090ー1234ー5678).
_SEPARATORS = r"[ \t\n\r\f\-‐‑‒–—―−ー().]"
_ALLOWED = r"^[0-9+ \t\n\r\f\-‐‑‒–—―−ー().]+$"
_SEPARATORS_RE = re.compile(_SEPARATORS)
_ALLOWED_RE = re.compile(_ALLOWED)
_NO_PHONE_WORDS_ARRAY = pa.array(sorted(NO_PHONE_WORDS), pa.large_string())

# "9012345678.0": a number column written out as floats; the ".0" is not a digit.
_FLOAT_TAIL = r"^(\d+)\.0+$"

# The reasons as ``_classify_chunk`` codes them (an index into this array).
_REASONS = pa.array([NO_PHONE, MALFORMED, NOT_MOBILE], pa.large_string())
_NO_PHONE_CODE, _MALFORMED_CODE, _NOT_MOBILE_CODE = 0, 1, 2

# Rows classified at a time: a chunk fits the CPU caches, and chunks run on threads.
_CHUNK = 65_536

# The types phonenumbers checks before MOBILE, in its order (_number_type_helper).
_TYPES_BEFORE_MOBILE = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
)


@dataclass(frozen=True)
class _Desc:
    pattern: str  # anchored, RE2 and Python compatible
    lengths: tuple[int, ...]


@dataclass(frozen=True)
class _Plan:
    country_code: str
    international_prefix: str  # regex, e.g. 010 for dialling out of Japan
    general: _Desc
    mobile: _Desc
    # For each mobile length: one pattern uniting the types phonenumbers checks before
    # MOBILE that can have that length (a number matching one of them is not MOBILE).
    shadowing: dict[int, str]


@cache
def _plan() -> _Plan:
    """Read the JP numbering plan from phonenumbers' metadata (once)."""
    md = phonenumbers.PhoneMetadata.metadata_for_region(REGION)
    assert md is not None and md.general_desc is not None and md.mobile is not None
    if md.same_mobile_and_fixed_line_pattern:  # pragma: no cover - not so for JP
        raise RuntimeError("JP metadata no longer separates mobile from fixed line")

    def desc(d: phonenumbers.PhoneNumberDesc, default: tuple[int, ...]) -> _Desc:
        lengths = tuple(d.possible_length or ()) or default
        return _Desc(f"^(?:{d.national_number_pattern})$", lengths)

    general = desc(md.general_desc, ())
    mobile = desc(md.mobile, general.lengths)
    before = [
        desc(d, general.lengths)
        for name in _TYPES_BEFORE_MOBILE
        if (d := getattr(md, name)) is not None and d.national_number_pattern
    ]
    shadowing = {
        length: "|".join(d.pattern for d in before if length in d.lengths) or "$^"
        for length in mobile.lengths
    }
    return _Plan(str(md.country_code), md.international_prefix or "$^", general, mobile, shadowing)


# Bytes kept of a number: its digits. Every other allowed character (ASCII or a
# multi-byte dash) is a separator.
_DIGITS = np.zeros(256, dtype=bool)
_DIGITS[list(b"0123456789")] = True


def _buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) of a large_string array with offset 0."""
    assert arr.offset == 0, "slice offsets are not supported here"
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[: len(arr) + 1]
    data_buf = arr.buffers()[2]
    data = np.frombuffer(data_buf or b"", dtype=np.uint8)
    return offsets, data


def _keep(arr: pa.Array, table: np.ndarray) -> pa.Array:
    """Per row, keep only the bytes ``table`` allows: ``"".join(c for c in row if c in kept)``."""
    offsets, data = _buffers(arr)
    rel = offsets - offsets[0]
    data = data[offsets[0] : offsets[-1]]
    mask = table[data]
    counter = np.int32 if len(data) < 2**31 else np.int64  # half the memory traffic
    kept_before = np.concatenate(([0], np.cumsum(mask, dtype=counter)))
    return pa.LargeStringArray.from_buffers(
        len(arr),
        pa.py_buffer(kept_before[rel].astype(np.int64)),
        pa.py_buffer(data[mask].tobytes()),
        arr.buffers()[0],
        arr.null_count,
    )


def _drop_prefix(arr: pa.Array, skip: np.ndarray) -> pa.Array:
    """Per row, drop the first ``skip[i]`` characters: ``row[skip:]``."""
    values, counts = np.unique(skip, return_counts=True)
    if not len(values):
        return arr
    common = int(values[np.argmax(counts)])
    out = pc.utf8_slice_codeunits(arr, common)
    for value in values:
        if value != common:
            where = pa.array(skip == value)
            out = pc.replace_with_mask(
                out, where, pc.utf8_slice_codeunits(arr.filter(where), int(value))
            )
    return out


def _starts(values: pa.Array, regex: str) -> pa.Array:
    return pc.fill_null(pc.match_substring_regex(values, regex), False)


def _np(mask: pa.Array) -> np.ndarray:
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _text(value: str | None) -> pa.Scalar:
    return pa.scalar(value, pa.large_string())


def _as_text(raw: pd.Series) -> pa.Array:
    if pd.api.types.is_float_dtype(raw.dtype):
        # A column Excel turned into numbers: 9012345678.0 means 9012345678 (and 3.5,
        # no phone number, stays "3.5": malformed).
        whole = raw.dropna()
        if (whole == whole.round()).all():
            raw = raw.astype("Int64")
    arr = pa.array(raw.astype(STRING).array, type=pa.large_string())
    if isinstance(arr, pa.ChunkedArray):  # what pandas hands over in several chunks, or none
        return arr.combine_chunks()
    return pa.concat_arrays([arr]) if arr.offset else arr


def _normalized(arr: pa.Array) -> pa.Array:
    """NFKC (full-width digits, hyphens, spaces → ASCII) and trim; only rows that need it."""
    ascii_rows = pc.fill_null(pc.string_is_ascii(arr), True)
    if not pc.all(ascii_rows).as_py():
        other = pc.invert(ascii_rows)
        arr = pc.replace_with_mask(arr, other, pc.utf8_normalize(arr.filter(other), "NFKC"))
    out = pc.utf8_trim_whitespace(arr)
    out = pc.replace_substring_regex(out, _FLOAT_TAIL, r"\1")
    return pa.concat_arrays([out]) if out.offset else out


def classify_phones(raw: pd.Series) -> pd.DataFrame:
    """Classify each raw phone value; one row per input, indexed like ``raw``.

    Columns: ``e164`` (``+819012345678`` or NA), ``national`` (``09012345678`` or NA),
    ``mobile`` (bool) and ``reason`` (NA for mobiles, else ``no_phone``, ``malformed``
    or ``not_mobile``). ``e164``/``national`` are filled for every parseable Japanese
    number (landlines too), so exclusions can still show what was there.

    >>> raw = pd.Series(["０９０－１２３４－５６７８", "03-1234-5678", " "])
    >>> classify_phones(raw)["reason"].tolist()
    [<NA>, 'not_mobile', 'no_phone']
    """
    if len(raw) <= _CHUNK:
        return _classify_chunk(raw)
    # Chunks fit the CPU caches, and pyarrow and numpy release the GIL, so a thread per
    # core roughly halves the time on the 2-core machines smsops runs on.
    parts = [raw.iloc[i : i + _CHUNK] for i in range(0, len(raw), _CHUNK)]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return pd.concat(list(pool.map(_classify_chunk, parts)))


def _classify_chunk(raw: pd.Series) -> pd.DataFrame:
    """:func:`classify_phones` on one chunk, step by step: read the characters, keep the
    digits, refuse what no number can be, find the national number, test it against the
    plan, and leave the shapes not modelled here to phonenumbers."""
    plan = _plan()
    text = _normalized(_as_text(raw))
    blank = _blank(text)
    pluses, plus = _pluses(text)
    digits, ndigits, plus = _digits(text, plus, pluses, plan.country_code)
    malformed = _malformed(text, blank, pluses, plus, ndigits, plan)
    usable = ~blank & ~malformed
    nsn, modelled = _national_number(digits, ndigits, plus, usable, plan)
    mobile = _mobile(nsn, modelled, plan)
    columns = _columns(nsn, modelled, mobile, blank, malformed, plan.country_code)
    _fall_back(columns, text, usable & ~modelled)
    return pd.DataFrame(
        {
            "e164": pd.array(columns["e164"], dtype=STRING),
            "national": pd.array(columns["national"], dtype=STRING),
            "mobile": columns["mobile"].to_numpy(zero_copy_only=False),
            "reason": pd.array(columns["reason"], dtype=STRING),
        },
        index=raw.index,
    )


def _blank(text: pa.Array) -> np.ndarray:
    """Rows that hold no phone: missing, empty, or a word for none (``なし``, ``n/a``)."""
    blank = _np(pc.equal(pc.binary_length(text), 0)) | _np(pc.is_null(text))
    return blank | _np(pc.is_in(pc.utf8_lower(text), value_set=_NO_PHONE_WORDS_ARRAY))


def _pluses(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(how many "+" each row has, whether it has one before its first digit)."""
    pluses = pc.fill_null(pc.count_substring(text, "+"), 0).to_numpy(zero_copy_only=False)
    plus = np.zeros(len(text), dtype=bool)
    if pluses.any():  # "+" must come before the first digit, and only once
        some = pluses > 0
        plus[some] = _np(pc.match_substring_regex(text.filter(pa.array(some)), r"^[^0-9]*\+"))
    return pluses, plus


def _digits(
    text: pa.Array, plus: np.ndarray, pluses: np.ndarray, cc: str
) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """(each row's digits, how many, whether it is international): "00 81 …" reads as
    "+81 …" (see the module docstring), its 00 dropped as if it were a "+"."""
    digits = _keep(text, _DIGITS)
    ndigits = pc.binary_length(digits).to_numpy(zero_copy_only=False)
    intl = (pluses == 0) & _np(pc.starts_with(digits, "00" + cc))
    if intl.any():
        digits = _drop_prefix(digits, 2 * intl.astype(np.int64))
        ndigits = ndigits - 2 * intl
        plus = plus | intl
    return digits, ndigits, plus


def _malformed(
    text: pa.Array,
    blank: np.ndarray,
    pluses: np.ndarray,
    plus: np.ndarray,
    ndigits: np.ndarray,
    plan: _Plan,
) -> np.ndarray:
    """Rows no phone number can be: other characters than digits and separators, a "+"
    out of place or repeated, or fewer digits than any number of the plan (and, without
    "+", than any foreign one)."""
    allowed = _np(pc.match_substring_regex(text, _ALLOWED))
    too_short = ~plus & (ndigits < min(plan.general.lengths))
    return ~blank & (~allowed | (pluses > plus) | too_short)


def _national_number(
    digits: pa.Array, ndigits: np.ndarray, plus: np.ndarray, usable: np.ndarray, plan: _Plan
) -> tuple[pa.Array, np.ndarray]:
    """(the national significant number (nsn) of each row, whether that row is modelled
    here), mirroring phonenumbers.parse(.., "JP"):

    * ``+81 0?X…`` → drop 81, then the national prefix 0
    * ``0X…``      → drop the national prefix 0
    * ``X…``       → as is (a leading 0 eaten by a spreadsheet)
    * ``81X…``     → drop 81 only when the rest fits the plan and the whole does not
      (phonenumbers' _maybe_extract_country_code)

    Rows not modelled (foreign numbers, 00/010 prefixes, lengths outside the plan) are
    left to phonenumbers row by row."""
    cc = plan.country_code
    idd = _np(pc.match_substring_regex(digits, f"^(?:{plan.international_prefix})"))
    starts_0 = _np(pc.starts_with(digits, "0"))
    starts_00 = _np(pc.starts_with(digits, "00"))
    starts_0x = starts_0 & ~starts_00 & ~idd
    starts_x = ~starts_0 & (ndigits > 0)
    starts_cc = _np(pc.starts_with(digits, cc))
    rest_0 = _np(pc.starts_with(digits, cc + "0"))
    rest_00 = _np(pc.starts_with(digits, cc + "00"))
    rest_0x = starts_cc & rest_0 & ~rest_00
    rest_ok = starts_cc & ~rest_00 & (ndigits > len(cc))
    skip_cc = len(cc) + rest_0x.astype(np.int64)

    cc_dropped = np.zeros(len(digits), dtype=bool)
    maybe = ~plus & rest_ok & usable
    if maybe.any():
        pos = np.flatnonzero(maybe)
        whole = digits.take(pa.array(pos))
        rest = _drop_prefix(whole, skip_cc[pos])
        gen = plan.general
        cc_dropped[pos] = (~_np(_matches(whole, gen)) & _np(_matches(rest, gen))) | (
            ndigits[pos] > max(gen.lengths)
        )

    skip = np.where(plus | cc_dropped, skip_cc, starts_0x.astype(np.int64))
    nsn = _drop_prefix(digits, skip)
    shape_ok = np.where(plus, rest_ok, starts_0x | starts_x)
    possible = np.isin(ndigits - skip, plan.general.lengths)
    return nsn, usable & shape_ok & possible


def _mobile(nsn: pa.Array, modelled: np.ndarray, plan: _Plan) -> np.ndarray:
    """Modelled rows whose nsn is a mobile number: per length, the mobile pattern, the
    general pattern, and none of the types phonenumbers checks before MOBILE."""
    nsn_len = pc.binary_length(nsn).to_numpy(zero_copy_only=False)
    mobile = np.zeros(len(nsn), dtype=bool)
    for length, shadow in plan.shadowing.items():
        pos = np.flatnonzero(modelled & (nsn_len == length))
        cand = nsn.take(pa.array(pos))
        for pattern, want in (
            (plan.mobile.pattern, True),
            (plan.general.pattern, True),
            (f"^(?:{shadow})$", False),
        ):
            hit = _np(pc.match_substring_regex(cand, pattern)) == want
            pos, cand = pos[hit], cand.filter(pa.array(hit))
        mobile[pos] = True
    return mobile


def _columns(
    nsn: pa.Array,
    modelled: np.ndarray,
    mobile: np.ndarray,
    blank: np.ndarray,
    malformed: np.ndarray,
    cc: str,
) -> dict[str, pa.Array]:
    """The answer's columns as Arrow arrays: e164 and national for every modelled row,
    the reason for every row that is not a mobile."""
    codes = np.full(len(nsn), _NOT_MOBILE_CODE, dtype=np.int8)
    codes[malformed] = _MALFORMED_CODE
    codes[blank] = _NO_PHONE_CODE
    reason = pa.DictionaryArray.from_arrays(pa.array(codes, mask=mobile), _REASONS)
    null = _text(None)
    valid = pa.array(modelled)
    return {
        "e164": pc.if_else(
            valid, pc.binary_join_element_wise(_text("+" + cc), nsn, _text("")), null
        ),
        "national": pc.if_else(
            valid, pc.binary_join_element_wise(_text("0"), nsn, _text("")), null
        ),
        "mobile": pa.array(mobile),
        "reason": reason.cast(pa.large_string()),
    }


def _fall_back(columns: dict[str, pa.Array], text: pa.Array, rows: np.ndarray) -> None:
    """Classify ``rows`` (the shapes not modelled here; few in real tables) with
    phonenumbers itself, one by one, into ``columns``."""
    positions = np.flatnonzero(rows)
    if not len(positions):
        return
    values = text.take(pa.array(positions)).to_pylist()
    fallback = list(zip(*(reference_classify(v) for v in values), strict=True))
    where = pa.array(rows)
    for name, vals in zip(list(columns), fallback, strict=True):
        columns[name] = pc.replace_with_mask(
            columns[name], where, pa.array(vals, columns[name].type)
        )


def _matches(values: pa.Array, d: _Desc) -> pa.Array:
    """phonenumbers' _is_number_matching_desc, vectorized (null → False)."""
    lengths = pc.binary_length(values)
    in_len = pc.is_in(lengths, value_set=pa.array(d.lengths, lengths.type))
    return pc.fill_null(pc.and_(in_len, pc.match_substring_regex(values, d.pattern)), False)


def reference_classify(value: object) -> tuple[str | None, str | None, bool, str | None]:
    """Classify one value with phonenumbers itself, as ``(e164, national, mobile, reason)``.

    The reference the vectorized path is tested against, and its fallback for the rare
    shapes it does not model. Same character rules: letters are never vanity digits;
    and ``00 81 …`` is read as ``+81 …`` (the one divergence, see the module docstring).
    """
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None, None, False, NO_PHONE
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = re.sub(_FLOAT_TAIL, r"\1", unicodedata.normalize("NFKC", str(value)).strip())
    if not text or text.lower() in NO_PHONE_WORDS:
        return None, None, False, NO_PHONE
    compact = _SEPARATORS_RE.sub("", text)
    if not _ALLOWED_RE.match(text) or "+" in compact[1:]:
        return None, None, False, MALFORMED
    if compact.startswith("00" + _plan().country_code):
        text = "+" + compact[2:]
    try:
        num = phonenumbers.parse(text, REGION)
    except NumberParseException:
        return None, None, False, MALFORMED
    if not phonenumbers.is_possible_number(num):
        return None, None, False, MALFORMED
    e164 = phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)
    if str(num.country_code) != _plan().country_code:
        return e164, None, False, NOT_MOBILE
    national = "0" + phonenumbers.national_significant_number(num).lstrip("0")
    if phonenumbers.number_type(num) == PhoneNumberType.MOBILE:
        return e164, national, True, None
    return e164, national, False, NOT_MOBILE


def mask_phone(phone: str | None) -> str:
    """Mask a phone number for logs: ``+819012345678`` → ``090-****-5678``."""
    if phone is None or phone != phone:
        return ""
    digits = "".join(ch for ch in str(phone) if ch.isdigit())
    if str(phone).startswith("+81"):
        digits = "0" + digits[2:]
    if len(digits) < 7:
        return "*" * len(digits)
    return f"{digits[:3]}-****-{digits[-4:]}"


def mask_phones(phones: pd.Series) -> pd.Series:
    """Vectorized :func:`mask_phone` for E.164 Japanese numbers."""
    s = phones.astype(STRING)
    digits = s.str.replace(r"\D", "", regex=True)
    national = ("0" + s.str.slice(3)).where(s.str.startswith("+81"), digits)
    return national.str.slice(0, 3) + "-****-" + national.str.slice(-4)
