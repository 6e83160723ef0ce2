"""Deterministic synthetic user tables with the messy phone column real Japanese exports have.

Everything is vectorized (numpy string ufuncs and lookup tables), so a million users take
a few seconds. Numbers are random digits, names are common Japanese names, e-mails use the
reserved ``example.com``/``example.jp`` domains: nothing here belongs to a real person.

Usage: ``python -m smsops.synthetic data/sample_users.csv 1000 [--encoding cp932]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from os import PathLike

import numpy as np
import pandas as pd

from smsops.domain.vocabulary import Exclusion

STRING = pd.StringDtype("pyarrow")

_FULL_WIDTH = str.maketrans("0123456789-", "０１２３４５６７８９－")
# Lookup tables: 4-digit (and shorter) blocks as ASCII and as full-width text.
_ASCII4 = np.array([f"{i:04d}" for i in range(10_000)])
_WIDE4 = np.array([s.translate(_FULL_WIDTH) for s in _ASCII4])
_ASCII3 = np.array([f"{i:03d}" for i in range(1_000)])
_ASCII2 = np.array([f"{i:02d}" for i in range(100)])

# Row kinds and their shares (mobiles take what is left).
_KINDS: dict[str, float] = {
    "landline": 0.08,
    "toll_free": 0.02,
    "ip": 0.01,
    "unallocated": 0.01,
    "blank": 0.06,
    "malformed": 0.02,
    "foreign": 0.002,
    "duplicate": 0.05,
}
_MOBILE_PREFIXES = (("090", 0.45), ("080", 0.30), ("070", 0.22), ("060", 0.03))
# Ways people write 090-1234-5678, with their shares.
_MOBILE_FORMATS = (
    ("hyphen", 0.40),  # 090-1234-5678
    ("plain", 0.20),  # 09012345678
    ("spaces", 0.05),  # 090 1234 5678
    ("full_width", 0.07),  # ０９０－１２３４－５６７８
    ("parens", 0.04),  # (090)1234-5678
    ("katakana", 0.04),  # 090ー1234ー5678
    ("intl_spaces", 0.05),  # +81 90 1234 5678
    ("intl_hyphen", 0.05),  # +81-90-1234-5678
    ("cc_hyphen", 0.03),  # 81-90-1234-5678
    ("eaten_zero", 0.07),  # 9012345678
)
# Area codes of 2, 3 and 4 digits (Tokyo, Osaka; Sapporo, Sendai, …; Fujisawa, …).
_AREA2 = ("03", "06")
_AREA3 = ("011", "022", "045", "052", "075", "078", "082", "092")
_AREA4 = ("0466", "0422", "0475", "0276", "0877")
_MALFORMED = (
    "090-123",
    "080-12",
    "090-1234-567890",
    "0901234567890",
    "tel:",
    "000",
)
# no phone: empty, or said in words
_BLANKS = (None, "", " ", "　", "なし", "-", "不明", "n/a")

_FAMILY = (
    ("佐藤", "sato"),
    ("鈴木", "suzuki"),
    ("高橋", "takahashi"),
    ("田中", "tanaka"),
    ("伊藤", "ito"),
    ("渡辺", "watanabe"),
    ("山本", "yamamoto"),
    ("中村", "nakamura"),
    ("小林", "kobayashi"),
    ("加藤", "kato"),
    ("吉田", "yoshida"),
    ("山田", "yamada"),
    ("佐々木", "sasaki"),
    ("山口", "yamaguchi"),
    ("松本", "matsumoto"),
    ("井上", "inoue"),
    ("木村", "kimura"),
    ("林", "hayashi"),
    ("斎藤", "saito"),
    ("清水", "shimizu"),
    ("山崎", "yamazaki"),
    ("森", "mori"),
    ("池田", "ikeda"),
    ("橋本", "hashimoto"),
    ("阿部", "abe"),
    ("石川", "ishikawa"),
    ("山下", "yamashita"),
    ("中島", "nakajima"),
    ("石井", "ishii"),
    ("小川", "ogawa"),
)
_GIVEN = (
    ("太郎", "taro"),
    ("花子", "hanako"),
    ("翔太", "shota"),
    ("陽菜", "hina"),
    ("大輔", "daisuke"),
    ("美咲", "misaki"),
    ("健太", "kenta"),
    ("さくら", "sakura"),
    ("拓海", "takumi"),
    ("結衣", "yui"),
    ("蓮", "ren"),
    ("葵", "aoi"),
    ("悠真", "yuma"),
    ("凛", "rin"),
    ("湊", "minato"),
    ("陽葵", "himari"),
    ("大翔", "hiroto"),
    ("芽依", "mei"),
    ("直樹", "naoki"),
    ("由美", "yumi"),
    ("誠", "makoto"),
    ("恵子", "keiko"),
    ("浩", "hiroshi"),
    ("裕子", "yuko"),
    ("隆", "takashi"),
    ("明美", "akemi"),
    ("一郎", "ichiro"),
    ("優子", "yuko"),
    ("亮", "ryo"),
    ("真由美", "mayumi"),
)
_TAGS = (
    ("", 0.55),
    ("newsletter", 0.2),
    ("vip", 0.05),
    ("vip;newsletter", 0.08),
    ("campaign2025", 0.07),
    ("newsletter;campaign2025", 0.05),
)


def _pick(rng: np.random.Generator, options: Sequence[tuple[str, float]], n: int) -> np.ndarray:
    """Draw ``n`` labels with the given shares."""
    labels = np.array([o for o, _ in options])
    p = np.array([w for _, w in options])
    return labels[rng.choice(len(labels), size=n, p=p / p.sum())]


def _join(*parts: np.ndarray | str) -> np.ndarray:
    """Concatenate string arrays (and constants) element-wise."""
    out = np.asarray(parts[0])
    for part in parts[1:]:
        out = np.strings.add(out, part)
    return out


def _mobile_text(prefix: np.ndarray, a: np.ndarray, b: np.ndarray, fmt: np.ndarray) -> np.ndarray:
    """Write mobile numbers (prefix ``090``, blocks ``a``/``b`` as ints) in format ``fmt``."""
    out = np.empty(len(prefix), dtype=object)
    for name, _ in _MOBILE_FORMATS:
        m = fmt == name
        if m.any():
            out[m] = _mobile_format(name, prefix[m], a[m], b[m])
    return out


def _mobile_format(name: str, p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Write mobile numbers in one format (see ``_MOBILE_FORMATS``)."""
    x, y, p1 = _ASCII4[a], _ASCII4[b], np.strings.slice(p, 1, None)
    match name:
        case "hyphen":
            return _join(p, "-", x, "-", y)
        case "plain":
            return _join(p, x, y)
        case "spaces":
            return _join(p, " ", x, " ", y)
        case "full_width":
            values, where = np.unique(p, return_inverse=True)  # a handful of prefixes
            wide = np.array([v.translate(_FULL_WIDTH) for v in values])[where]
            return _join(wide, "－", _WIDE4[a], "－", _WIDE4[b])
        case "parens":
            return _join("(", p, ")", x, "-", y)
        case "katakana":
            return _join(p, "ー", x, "ー", y)
        case "intl_spaces":
            return _join("+81 ", p1, " ", x, " ", y)
        case "intl_hyphen":
            return _join("+81-", p1, "-", x, "-", y)
        case "cc_hyphen":
            return _join("81-", p1, "-", x, "-", y)
        case "eaten_zero":
            return _join(p1, x, y)
    raise ValueError(f"unknown mobile format {name!r}")


def messy_phones(n: int, seed: int = 0) -> pd.Series:
    """``n`` phone values as a Japanese user table holds them (mostly mobiles, some junk).

    Shares: ~75% mobiles (070/080/090, some 060) in ten writings, 8% landlines, 2%
    toll-free, 1% 050, 1% unallocated 090-0xxx, 6% blank, 2% malformed, 0.2% foreign and
    5% repeats of an earlier mobile, often written differently.
    """
    rng = np.random.default_rng(seed)
    kinds = (*_KINDS.items(), ("mobile", 1.0 - sum(_KINDS.values())))
    kind = _pick(rng, kinds, n)
    out = np.empty(n, dtype=object)

    # Mobiles, plus the unallocated 090-0xxx block and the duplicates (filled below).
    prefix = _pick(rng, _MOBILE_PREFIXES, n)
    a = rng.integers(1000, 10_000, n)  # 4th digit 1-9: an allocated block
    b = rng.integers(0, 10_000, n)
    unallocated = kind == "unallocated"
    prefix[unallocated], a[unallocated] = "090", a[unallocated] % 1000
    fmt = _pick(rng, _MOBILE_FORMATS, n)

    # A duplicate copies an earlier mobile's number; half keep its writing.
    mobile_rows = np.flatnonzero(kind == "mobile")
    dup_rows = np.flatnonzero(kind == Exclusion.DUPLICATE)
    before = np.searchsorted(mobile_rows, dup_rows)
    dup_rows, before = dup_rows[before > 0], before[before > 0]
    kind[kind == Exclusion.DUPLICATE] = "mobile"  # from here on a repeat is written like any mobile
    src = mobile_rows[(rng.random(len(dup_rows)) * before).astype(np.int64)]
    prefix[dup_rows], a[dup_rows], b[dup_rows] = prefix[src], a[src], b[src]
    fmt[dup_rows] = np.where(rng.random(len(dup_rows)) < 0.5, fmt[src], fmt[dup_rows])
    m = np.isin(kind, ["mobile", "unallocated"])
    out[m] = _mobile_text(prefix[m], a[m], b[m], fmt[m])

    # Landlines: 03-1234-5678, 011-234-5678, 0466-12-3456 (subscriber starts 2-9).
    m = kind == "landline"
    k = int(m.sum())
    width = rng.choice([2, 3, 4], size=k, p=[0.5, 0.35, 0.15])
    area = np.where(
        width == 2,
        rng.choice(_AREA2, k),
        np.where(width == 3, rng.choice(_AREA3, k), rng.choice(_AREA4, k)),
    )
    head = np.where(  # the subscriber part before the last 4 digits; 10 digits in all
        width == 2,
        _ASCII4[rng.integers(2000, 10_000, k)],
        np.where(
            width == 3, _ASCII3[rng.integers(200, 1000, k)], _ASCII2[rng.integers(20, 100, k)]
        ),
    )
    tail = _ASCII4[rng.integers(0, 10_000, k)]
    sep = np.where(rng.random(k) < 0.85, "-", "")
    out[m] = _join(area, sep, head, sep, tail)

    # Toll-free 0120-123-456 / 0800-123-4567, and 050 IP phones.
    m = kind == "toll_free"
    k = int(m.sum())
    out[m] = np.where(
        rng.random(k) < 0.7,
        _join("0120-", _ASCII3[rng.integers(0, 1000, k)], "-", _ASCII3[rng.integers(0, 1000, k)]),
        _join(
            "0800-", _ASCII3[rng.integers(100, 1000, k)], "-", _ASCII4[rng.integers(0, 10_000, k)]
        ),
    )
    m = kind == "ip"
    k = int(m.sum())
    out[m] = _join(
        "050-", _ASCII4[rng.integers(1000, 10_000, k)], "-", _ASCII4[rng.integers(0, 10_000, k)]
    )

    # Foreign: US fictional 555 numbers and UK drama numbers.
    m = kind == "foreign"
    k = int(m.sum())
    out[m] = np.where(
        rng.random(k) < 0.5,
        _join("+1 415 555 ", _ASCII4[rng.integers(0, 10_000, k)]),
        _join("+44 20 7946 0", _ASCII3[rng.integers(0, 1000, k)]),
    )

    # Malformed: letters where digits belong, words, fragments, too many digits.
    m = kind == Exclusion.MALFORMED
    k = int(m.sum())
    letters = np.array(list("ABCDEFGHJKLMNPQRSTUVWXYZ"))
    code = _join(*(letters[rng.integers(0, len(letters), k)] for _ in range(4)))
    out[m] = np.where(
        rng.random(k) < 0.4,
        _join(
            _pick(rng, _MOBILE_PREFIXES, k), "-", _ASCII4[rng.integers(1000, 10_000, k)], "-", code
        ),
        np.array(_MALFORMED, dtype=object)[rng.integers(0, len(_MALFORMED), k)],
    )

    m = kind == "blank"
    out[m] = np.array(_BLANKS, dtype=object)[rng.integers(0, len(_BLANKS), int(m.sum()))]

    # Stray spaces (ASCII or ideographic) before or after some filled values.
    filled = np.flatnonzero(~np.isin(kind, ["blank", "malformed"]))
    pad = filled[rng.random(len(filled)) < 0.04]
    space = np.where(rng.random(len(pad)) < 0.75, " ", "　")
    text = out[pad].astype(str)
    out[pad] = np.where(rng.random(len(pad)) < 0.5, _join(space, text), _join(text, space))
    return pd.Series(pd.array(out, dtype=STRING), name="phone")


def users_frame(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` synthetic users: user_id, name, email, phone (messy), registered_at, tags."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, n + 1)
    family = rng.integers(0, len(_FAMILY), n)
    given = rng.integers(0, len(_GIVEN), n)
    fam_k, fam_r = (np.array(c) for c in zip(*_FAMILY, strict=True))
    giv_k, giv_r = (np.array(c) for c in zip(*_GIVEN, strict=True))
    domain = np.where(rng.random(n) < 0.6, "@example.com", "@example.jp")
    start = np.datetime64("2015-01-01")
    days = rng.integers(0, (np.datetime64("2026-01-01") - start).astype(int), n)
    return pd.DataFrame(
        {
            "user_id": pd.array(_join("u", np.strings.zfill(ids.astype(str), 7)), dtype=STRING),
            "name": pd.array(_join(fam_k[family], "　", giv_k[given]), dtype=STRING),
            "email": pd.array(
                _join(giv_r[given], ".", fam_r[family], ids.astype(str), domain), dtype=STRING
            ),
            "phone": messy_phones(n, seed).array,
            "registered_at": pd.array(np.datetime_as_string(start + days, unit="D"), dtype=STRING),
            "tags": pd.array(_pick(rng, _TAGS, n), dtype=STRING),
        }
    )


def write_users_csv(
    path: str | PathLike[str], n: int, seed: int = 0, encoding: str = "utf-8"
) -> None:
    """Write ``users_frame(n, seed)`` as CSV (``utf-8``, ``utf-8-sig`` or Excel's ``cp932``)."""
    users_frame(n, seed).to_csv(path, index=False, encoding=encoding)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m smsops.synthetic PATH N [--seed S] [--encoding E]``."""
    parser = argparse.ArgumentParser(description="Write a synthetic users CSV.")
    parser.add_argument("path")
    parser.add_argument("n", type=int)
    parser.add_argument(
        "--seed", type=int, default=2026, help="default 2026, the seed of data/sample_users.csv"
    )
    parser.add_argument("--encoding", default="utf-8", choices=["utf-8", "utf-8-sig", "cp932"])
    args = parser.parse_args(argv)
    write_users_csv(args.path, args.n, seed=args.seed, encoding=args.encoding)


if __name__ == "__main__":
    main()
