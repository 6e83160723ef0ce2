"""Read user tables and opt-out lists (R16) from CSV files in any encoding Excel writes:
all or nothing, every problem named by file, row, line and column."""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import stat
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from smsops.domain.schemas import STRING, Users, validate
from smsops.errors import InputError, Problem, Unstreamable

REQUIRED = ("user_id", "phone")
# Header names of a mobile number column: preferred as the phone column over the names
# of any phone (電話番号, tel…), which in Japanese user tables is often the home line (R3).
MOBILE_HEADERS = (
    "携帯電話番号",
    "携帯番号",
    "携帯電話",
    "携帯",
    "携帯tel",
    "mobile",
    "mobile phone",
    "mobile_phone",
    "mobilephone",
    "mobile number",
    "mobile_number",
    "cell phone",
    "cellphone",
    "cell_phone",
)
# Header names read as the required columns, compared after NFKC, trimming and case
# folding (so "Phone", "ＰＨＯＮＥ" and " 電話番号 " all name the phone column).
ALIASES = {
    "user_id": (
        "user_id",
        "userid",
        "user id",
        "ユーザーid",
        "ユーザid",
        "会員id",
        "会員番号",
        "顧客id",
    ),
    "phone": (
        "phone",
        "電話番号",
        "電話",
        "phone_number",
        "phone number",
        "telephone",
        "tel",
        *MOBILE_HEADERS,
    ),
}
PHONE_HEADERS = ALIASES["phone"]  # the phone column of an opt-out list
# Limits: what is past them is a broken or hostile file, refused in one line naming where,
# before it costs unbounded memory or time.
# A whole file, in bytes (several files of one import together too), checked before a byte
# is read: a whole-file read (a file with a problem, a preview's --users) costs several
# times the file's size in memory, so 256 MiB, about 3 million users, stays under 4 GB. A
# streamed import holds one batch and the user ids (3M users: ~490 MB in all, #12).
MAX_FILE = 256 << 20
# Columns: no user table has a thousand attributes, and width costs more than bytes: the
# parser and pandas pay per column (16,384 columns of 1,000 rows, a 31 MiB file: 5 s and
# 1.1 GB) and the store writes every attribute's name again for each user.
MAX_COLUMNS = 1_000
MAX_NAME = 1_000  # characters of a column name (a survey's whole question fits)
MAX_USER_ID = 128  # characters: the store's users.user_id is VARCHAR(128)
MAX_PHONE = 64  # characters: the store's users.phone is VARCHAR(64)
MAX_CELL = 1 << 20  # bytes (UTF-8): a bigger cell is no user attribute but a broken file
_NUL = "holds a NUL byte, which no text has (a binary or damaged file?)"
# The csv module reads the header line and checks quotes: let it read every cell pyarrow
# accepts (its default limit, 128 KiB, would read a long memo as a quote left open).
csv.field_size_limit(max(csv.field_size_limit(), MAX_CELL))
ENCODINGS = {
    "auto": "auto",
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "utf-8-sig": "utf-8",
    "cp932": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "ms932": "cp932",
    "windows-31j": "cp932",
    "utf-16": "utf-16",  # Excel's "Unicode text": UTF-16 with a BOM, tab-separated
    "utf16": "utf-16",
}
_CODEC_NAMES = {
    "utf-8": "UTF-8",
    "cp932": "CP932/Shift_JIS",
    "utf-16": "UTF-16",
    "utf-16-le": "UTF-16LE",
    "utf-16-be": "UTF-16BE",
}
_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
# A 3-byte UTF-8 character (kana, kanji, full-width forms), and its lead byte.
_UTF8_3_BYTES = re.compile(rb"[\xe0-\xef][\x80-\xbf]{2}")
_UTF8_KANA_KANJI = re.compile(rb"[\xe0-\xef]")
# What Excel saves for a long number typed into a General cell: 9.01234E+09.
_SCIENTIFIC = r"\s*[+-]?\d+(?:\.\d*)?[eE][+-]?\d+\s*$"


@dataclass
class _Table:
    """One CSV file on its way to a frame, with the problems found so far."""

    source: str
    named: bool  # several files are read together: problems name their file
    data: bytes = b""  # UTF-8, without BOM and leading blank lines
    delimiter: str = ","  # or a tab (Excel's "Unicode text" and "Text (Tab delimited)")
    skipped: int = 0  # blank lines before the header
    header: list[str] = field(default_factory=list)
    first: int = 1  # the parser's number of the first data row: 1 after a header line
    frame: pd.DataFrame | None = None
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # data row of each
    records: int = 0  # rows the parser saw, the header included
    problems: list[Problem] = field(default_factory=list)
    phone_column: str | None = None  # the header read as ``phone``, as written (R3)
    other_phones: list[str] = field(default_factory=list)  # phone-like, kept as attributes
    _lines: np.ndarray | None = None
    on_disk: bool = False  # streamed from the file itself: ``data`` is not held (#12)
    newlines: int = 0  # line ends in the file, counted when it was opened on disk

    def where(self, text: str, line: int | None = None) -> str:
        """``text`` followed by the file (when several) and the physical line."""
        parts = [f"in {self.source}"] * self.named + [f"line {line}"] * (line is not None)
        return f"{text} ({', '.join(parts)})" if parts else text

    def fail(
        self,
        text: str,
        column: str | None = None,
        line: int | None = None,
        content: str | None = None,
    ) -> _Table:
        """Record a problem of the whole table, which then gives no frame; ``content``:
        what the file holds that explains it (kept out of shared views)."""
        self.problems.append(Problem(None, column, self.where(text, line), content=content))
        self.frame = None
        return self

    def line_of(self, rows: np.ndarray) -> list[int | None]:
        """Physical line of each data row; None when quoted line breaks make it unknown."""
        if self._lines is None and len(rows):
            buf = np.frombuffer(self.data, np.uint8)
            ends = np.flatnonzero(buf == 10)
            starts, stops = np.r_[0, ends + 1], np.r_[ends, buf.size]
            cr_only = (stops - starts == 1) & (buf[np.minimum(starts, buf.size - 1)] == 13)
            lines = np.flatnonzero((stops > starts) & ~cr_only) + 1 + self.skipped
            # the parser skips blank lines too, so lines match rows unless a cell spans lines
            self._lines = lines if lines.size == self.records else np.empty(0, np.int64)
        known = self._lines if self._lines is not None else np.empty(0, np.int64)
        return [int(known[i]) if i < known.size else None for i in rows + self.first - 1]

    def flag(self, mask: object, column: str, texts: str | Sequence[str]) -> None:
        """Record a problem in ``column`` of each row where ``mask`` holds."""
        assert self.frame is not None
        pos = np.flatnonzero(np.asarray(mask, dtype=bool))
        texts = [texts] * pos.size if isinstance(texts, str) else texts
        rows, values = self.rows[pos], self.frame[column].iloc[pos].tolist()
        self.problems += [
            Problem(int(r), column, self.where(t, line), v)
            for r, line, t, v in zip(rows, self.line_of(rows), texts, values, strict=True)
        ]


def _decode(data: bytes, codec: str) -> str | int:
    """The decoded text, or the offset of the first byte that is not text in ``codec``.
    Valid UTF-8 gives "": its bytes are the text already, and a 1M-user file decoded to
    a str only to be dropped costs a second copy of it, several times its size (#12)."""
    if codec == "utf-8" and _is_utf8(data):
        return ""
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as exc:
        return exc.start
    if codec != "cp932":
        return text
    # Python's cp932 takes the lone bytes 0x80, 0xA0 and 0xFD-0xFF (no Shift_JIS text has
    # them) as U+0080 and U+F8F0-F8F3, so binary or Latin-1 files would pass as CP932
    odd = [i for i in map(text.find, "\x80\uf8f0\uf8f1\uf8f2\uf8f3") if i >= 0]
    return len(text[: min(odd)].encode(codec)) if odd else text


def _is_utf8(data: bytes) -> bool:
    """Whether ``data`` is valid UTF-8, checked by Arrow in place (no decoded copy)."""
    if len(data) >= 2**31:  # one Arrow binary value; smsops reads far smaller files
        return False
    buffer = pa.py_buffer(data)
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int32).tobytes())
    try:
        pa.Array.from_buffers(pa.binary(), 1, [None, offsets, buffer]).cast(pa.string())
    except pa.ArrowInvalid:
        return False
    return True


def _utf16_order(raw: bytes) -> str | None:
    """``"utf-16-le"`` or ``"utf-16-be"`` when ``raw`` is UTF-16 without a byte order mark.

    A CSV is mostly ASCII (delimiters, digits, line ends), which UTF-16 writes with a zero
    byte in every other place; no UTF-8 or CP932 text has zero bytes."""
    head = raw[:4096]
    pairs = len(head) // 2
    if not pairs or b"\x00" not in head:
        return None
    even, odd = head[0 : 2 * pairs : 2].count(0), head[1 : 2 * pairs : 2].count(0)
    if odd >= pairs / 4 and odd > 4 * even:
        return "utf-16-le"
    if even >= pairs / 4 and even > 4 * odd:
        return "utf-16-be"
    return None


def _line_end(data: bytes) -> bytes:
    """What ends a line: LF (or CRLF), or CR alone in old Mac exports."""
    return b"\n" if b"\n" in data or b"\r" not in data else b"\r"


def _line_at(data: bytes, at: int) -> int:
    """The physical line (1-based) that holds byte ``at``."""
    return data.count(_line_end(data), 0, at) + 1


def _mixed(data: bytes, bad: int) -> str | None:
    """Why ``data``, UTF-8 up to its byte ``bad``, mixes UTF-8 and CP932 lines (as when
    files saved by different tools are pasted together), or None when it does not.

    A line counts as UTF-8 when it decodes so and holds a 3-byte character (kana, kanji,
    full-width forms): CP932 half-width kana can happen to decode as 2-byte UTF-8."""
    end = _line_end(data)
    start = data.rfind(end, 0, bad) + 1
    line = data.count(end, 0, start) + 1
    if _UTF8_KANA_KANJI.search(data, 0, start):  # the bytes up to ``start`` are UTF-8
        return (
            f"mixes encodings: it reads as UTF-8 up to line {line - 1}, but line {line} "
            f"is not UTF-8 (byte 0x{data[bad]:02x} at offset {bad}; CP932/Shift_JIS?); "
            "save the whole file again in one encoding"
        )
    # only a line with a 3-byte UTF-8 sequence can be one: decode just those lines
    at = start
    while found := _UTF8_3_BYTES.search(data, at):
        first = data.rfind(end, 0, found.start()) + 1
        stop = data.find(end, found.end())
        stop = len(data) if stop < 0 else stop
        try:
            data[first:stop].decode("utf-8")
        except UnicodeDecodeError:
            at = stop + 1
            continue
        return (
            f"mixes encodings: it reads as CP932/Shift_JIS from line {line}, but line "
            f"{data.count(end, 0, first) + 1} is UTF-8; save the whole file again in one "
            "encoding"
        )
    return None


def _to_utf8(raw: bytes, encoding: str) -> bytes:
    """The file's text as UTF-8 without BOM; "auto" tries UTF-16 (by its BOM or its zero
    bytes), then UTF-8 (BOM or not), then CP932, and refuses a file that mixes the two."""
    kind = ENCODINGS.get(encoding.strip().lower().replace("_", "-"))
    if kind is None:
        raise ValueError(f"unknown encoding {encoding!r}: use auto, utf-8, cp932 or utf-16")
    if raw.startswith(_UTF16_BOMS) and kind in ("auto", "utf-16"):
        try:
            return raw.decode("utf-16").encode()
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-16 (broken at byte {exc.start})") from None
    order = _utf16_order(raw)
    if order is not None and kind in ("auto", "utf-16"):
        try:
            return raw.decode(order).encode()
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"looks like {_CODEC_NAMES[order]} without a byte order mark, but is broken "
                f"at byte {exc.start}; save it again from Excel as CSV UTF-8"
            ) from None
    if order is not None:
        raise ValueError(
            f"looks like UTF-16 (Excel's Unicode text), not {_CODEC_NAMES[kind]}; "
            "pass --encoding utf-16 or auto"
        )
    if kind == "utf-16":
        raise ValueError(
            "not UTF-16 (no byte order mark and no UTF-16 text); pass --encoding auto, "
            "which detects UTF-8 and CP932 too"
        )
    bom = raw.startswith(_BOM)
    # CP932 reads most UTF-8 without error, as mojibake: refuse instead
    if kind == "cp932" and (bom or (not raw.isascii() and isinstance(_decode(raw, "utf-8"), str))):
        raise ValueError("looks like UTF-8, not CP932; pass --encoding utf-8 or auto")
    body = raw[len(_BOM) :] if bom else raw
    auto = kind == "auto" and not bom
    failed = []
    for codec in ("utf-8", "cp932") if auto else ("cp932",) if kind == "cp932" else ("utf-8",):
        text = _decode(body, codec)
        if isinstance(text, str):
            if codec == "utf-8":
                return body
            bad = _decode(body, "utf-8")  # CP932 reads UTF-8 lines too, as mojibake
            if isinstance(bad, int) and (mixed := _mixed(body, bad)):
                raise ValueError(mixed)
            return text.encode()
        at = text + len(_BOM) * bom
        failed.append(
            f"{_CODEC_NAMES[codec]} (byte 0x{raw[at]:02x} at offset {at}, line {_line_at(raw, at)})"
        )
    raise ValueError(
        f"not {' nor '.join(failed)}; pass the right --encoding (utf-8, cp932 or utf-16)"
    )


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.0f} MiB"


def _too_big(size: int | None) -> str:
    """Why a file is not read; ``size`` None for a stream, known only to be past the limit."""
    limit = _size(MAX_FILE)
    if size is None:
        why = f"file is larger than {limit}, the largest file smsops reads at once"
    else:
        why = f"file is {_size(size)} ({size:,} bytes); the largest file smsops reads at once"
        why += f" is {limit}"
    return f"{why}: split it and import the parts one by one"


def _read(path: str | Path, limit: int = MAX_FILE) -> bytes:
    """The file's bytes; ValueError past ``limit``, before reading when the size is known
    and once past ``limit`` otherwise (a pipe, a device, a file still growing), so memory
    stays bounded by the limit."""
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        regular = stat.S_ISREG(info.st_mode)
        if regular and info.st_size > limit:
            raise ValueError(_too_big(info.st_size))
        # a file in one piece of its size (+1 byte, to see whether it grew); a stream in
        # pieces, never asking for more than the limit allows
        pieces = [f.read(info.st_size + 1)] if regular else []
        total = sum(map(len, pieces))
        while total <= limit and (piece := f.read(min(1 << 20, limit + 1 - total))):
            pieces.append(piece)
            total += len(piece)
    if total > limit:
        raise ValueError(_too_big(None))
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _short(value: object, width: int = 40) -> str:
    """``repr(value)``, cut to about ``width`` characters: problems quote values, and one
    line must stay one readable line whatever a cell holds."""
    text = repr(value)
    return text if len(text) <= width else f"{text[: width - 1]}…"


def _names(names: Sequence[str], shown: int = 10) -> str:
    """Header names for a message: the first ``shown``, each cut short."""
    more = f", … ({len(names) - shown:,} more)" if len(names) > shown else ""
    return ", ".join(_short(n) for n in names[:shown]) + more


def _numbers(values: Sequence[int], shown: int = 5) -> str:
    """``3, 4 and 7``; past ``shown`` numbers, ``3, 4, 7, … (12 in all)``."""
    text = [f"{v:,}" for v in values[:shown]]
    if len(values) > shown:
        return f"{', '.join(text)}, … ({len(values):,} in all)"
    return " and ".join([", ".join(text[:-1]), text[-1]]) if len(text) > 1 else text[0]


def _check_header(t: _Table, first: str) -> list[str]:
    """The names of the header line ``first``; none, with the problem recorded, when it is
    not a header smsops reads (NUL bytes, no names, too many or too long names)."""
    line = t.skipped + 1
    # count the fields before splitting: a one-line file of "a,a,a,…" would otherwise
    # become hundreds of millions of strings (quoted delimiters do not count)
    fields = re.sub(r'"[^"]*"', "", first).count(t.delimiter) + 1
    if fields > MAX_COLUMNS:
        t.fail(
            f"the header has {fields:,} columns; the most smsops reads is {MAX_COLUMNS:,}: "
            "delete the columns the users table does not need",
            line=line,
        )
        return []
    try:
        names = next(csv.reader([first], delimiter=t.delimiter))
    except csv.Error as exc:
        t.fail(f"cannot read the header line: {exc}", line=line)
        return []
    nul = [i + 1 for i, name in enumerate(names) if "\x00" in name]
    if nul:
        t.fail(f"header column{'s' * (len(nul) > 1)} {_numbers(nul)} {_NUL}", line=line)
    if not nul and (long := [i + 1 for i, n in enumerate(names) if len(n) > MAX_NAME]):
        most = max(len(name) for name in names)
        t.fail(
            f"header column{'s' * (len(long) > 1)} {_numbers(long)} "
            f"{'is a name of' if len(long) == 1 else 'are names of up to'} {most:,} characters; "
            f"the longest smsops reads is {MAX_NAME:,} (is the first line a header?)",
            line=line,
        )
    if not t.problems and not any(name.replace("\ufeff", "").strip() for name in names):
        boms = ", only byte order marks (U+FEFF: one added on every save?)"
        t.fail("the header line has no column names" + boms * ("\ufeff" in first), line=line)
    return [] if t.problems else names


def _open(path: str | Path, encoding: str, named: bool) -> _Table:
    """Read and decode a file and split its first line into header names."""
    t = _Table(str(path), named)
    try:
        data = _to_utf8(_read(path), encoding)
    except OSError as exc:
        missing = isinstance(exc, FileNotFoundError)
        return t.fail("file not found" if missing else f"cannot read the file: {exc.strerror}")
    except ValueError as exc:
        return t.fail(str(exc))
    if _line_end(data) == b"\r":  # an old Mac export: lines end with CR alone
        data = data.replace(b"\r", b"\n")
    t.data = data.lstrip(b"\r\n")
    t.skipped = data.count(b"\n", 0, len(data) - len(t.data))
    if not t.data or t.data.isspace():  # strip() would copy the whole file (#12)
        return t.fail("file is empty")
    if not t.data.endswith(b"\n"):  # the parser cannot skip a header line that never ends
        t.data += b"\n"
    first = t.data[: t.data.find(b"\n")].decode().rstrip("\r")
    if "\t" in first and "," not in first:
        t.delimiter = "\t"
    t.header = [name.replace("\ufeff", "").strip() for name in _check_header(t, first)]
    return t


def _key(name: str) -> str:
    return unicodedata.normalize("NFKC", name).strip().casefold()


def _phone_columns(names: list[str]) -> list[int]:
    """Positions of the phone-like columns, the one read as ``phone`` first (R3): the
    column named exactly ``phone`` (the contract's name), else the left-most mobile one
    (携帯電話番号, mobile…), else the left-most other (電話番号, tel…). A home line read in
    place of a mobile column would leave every user without an SMS number."""
    keys = [_key(name) for name in names]
    return sorted(
        (i for i, key in enumerate(keys) if key in PHONE_HEADERS),
        key=lambda i: (names[i] != "phone", keys[i] not in MOBILE_HEADERS, i),
    )


def _canonical(names: list[str]) -> list[str]:
    """Header names with the required columns under their canonical names: an exact
    ``user_id`` wins, else its first alias; the phone as :func:`_phone_columns` picks.
    The other phone-like columns keep their names, as attributes."""
    out = list(names)
    if "user_id" not in out:
        at = next((i for i, n in enumerate(out) if _key(n) in ALIASES["user_id"]), None)
        if at is not None:
            out[at] = "user_id"
    if phones := _phone_columns(out):
        out[phones[0]] = "phone"
    return out


def _parse(t: _Table, names: list[str], has_header: bool) -> _Table:
    """Parse the data rows with every column as text and only empty cells missing."""
    bad: list[pv.InvalidRow] = []
    cols = [f"c{i}" for i in range(len(names))]

    def skip(row: pv.InvalidRow) -> str:
        bad.append(row)
        return "skip"

    def read(threads: bool, block_size: int) -> pa.Table:
        bad.clear()
        return pv.read_csv(
            pa.BufferReader(t.data),
            read_options=pv.ReadOptions(
                use_threads=threads,
                block_size=block_size,
                column_names=cols,
                skip_rows=int(has_header),
            ),
            parse_options=pv.ParseOptions(
                delimiter=t.delimiter, newlines_in_values=True, invalid_row_handler=skip
            ),
            convert_options=pv.ConvertOptions(
                column_types=dict.fromkeys(cols, pa.string()),
                null_values=[""],
                strings_can_be_null=True,
            ),
        )

    block = 1 << 20
    try:
        try:
            table = read(threads=True, block_size=block)
        except pa.ArrowInvalid as exc:
            if "block" not in str(exc):
                raise
            # a row longer than a parse block: read the file as one block, so that the
            # oversized cell is named below rather than the parser's limit
            block = min(len(t.data) + 1, 2**31 - 1)
            table = read(threads=True, block_size=block)
        if bad and bad[0].number is None:  # only a single-threaded parse numbers the rows
            table = read(threads=False, block_size=block)
    except pa.ArrowException as exc:
        return t.fail(f"cannot parse the CSV: {exc}")
    t.first, t.records = int(has_header), table.num_rows + len(bad) + has_header
    sizes = [pc.binary_length(c) for c in table.columns]
    oversized = any(pc.any(pc.greater(size, MAX_CELL)).as_py() for size in sizes)
    sizes = sizes if oversized else []  # kept only to name the oversized cells
    # more lines than rows: blank lines, or cells spanning lines, which is legal but also
    # what a quote left open does to every row after it
    if (
        not oversized
        and t.data.rstrip(b"\r\n").count(b"\n") + 1 > t.records
        and any(pc.any(pc.match_substring(c, "\n")).as_py() for c in table.columns)
    ):
        reader = csv.reader(io.StringIO(t.data.decode()), strict=True, delimiter=t.delimiter)
        start = 0
        try:
            for _ in reader:
                start = reader.line_num
        except csv.Error as exc:
            return t.fail(
                f"the row that starts on line {start + 1 + t.skipped} has a quoted "
                f"cell that is not closed properly ({exc})"
            )
    broken = np.array([r.number - t.first for r in bad], np.int64)  # as data rows
    rows = np.setdiff1d(np.arange(1, table.num_rows + len(bad) + 1), broken, assume_unique=True)
    frame = table.to_pandas(types_mapper={pa.string(): STRING}.get)
    frame.columns = pd.Index(names)
    del table  # the frame holds its columns; what only the table held goes now (#12)
    blank = frame.isna().all(axis=1).to_numpy()  # Excel's trailing ",,," rows
    # no blank row (the usual case): the frame as it is, not a filtered copy of every
    # column, which doubled the table in memory (#12)
    t.frame = frame[~blank].reset_index(drop=True) if blank.any() else frame
    t.rows = rows[~blank]
    for name, size in zip(names, sizes, strict=True) if oversized else ():
        cells = pc.fill_null(size, 0).to_numpy()[~blank]
        big = cells > MAX_CELL
        t.flag(
            big,
            name,
            [f"is larger than 1 MiB ({n:,} bytes): a quote left open?" for n in cells[big]],
        )
    # NUL in a cell: binary or damaged, never what someone typed
    nul = _nul_lines(t, names, broken, bad) if b"\x00" in t.data else {}
    t.problems += [
        Problem(row, names[at], t.where(_NUL, line)) for (row, at), line in nul.items() if at >= 0
    ]
    t.problems += [
        Problem(
            int(row),
            None,
            t.where(
                f"{_NUL + ', and ' if (row, -1) in nul else ''}has "
                f"{r.actual_columns:,} field{'s' * (r.actual_columns != 1)}, expected "
                f"{r.expected_columns}",
                nul.get((row, -1), line),
            ),
        )
        for row, r, line in zip(broken, bad, t.line_of(broken), strict=True)
    ]
    return t


def _nul_lines(
    t: _Table, names: list[str], broken: np.ndarray, bad: list[pv.InvalidRow]
) -> dict[tuple[int, int], int | None]:
    """The cells holding NUL bytes, as (data row, column position; -1 for a row the parser
    could not split), each with the physical line of its first NUL: cells are in file
    order, so the k-th one holds the NULs after those of the k-1 before it. That line is
    known even where quoted line breaks hide the line a row starts on."""
    assert t.frame is not None
    cells = []
    for at, name in enumerate(names):
        counts = t.frame[name].str.count("\x00").fillna(0).to_numpy(np.int64)
        cells += [(int(t.rows[i]), at, int(counts[i])) for i in np.flatnonzero(counts)]
    cells += [(int(row), -1, r.text.count("\x00")) for row, r in zip(broken, bad, strict=True)]
    cells = sorted(cell for cell in cells if cell[2])
    buf = np.frombuffer(t.data, np.uint8)
    zeros = np.flatnonzero(buf == 0)
    if sum(n for *_, n in cells) != zeros.size:  # cannot happen; name rows, not lines
        return {(row, at): None for row, at, _ in cells}
    first = np.cumsum([0] + [n for *_, n in cells])[:-1]
    lines = np.searchsorted(np.flatnonzero(buf == 10), zeros[first]) + 1 + t.skipped
    return {(row, at): int(line) for (row, at, _), line in zip(cells, lines, strict=True)}


def _check_phones(t: _Table, column: str) -> None:
    """Flag phone cells too long to be a number, and numbers Excel turned into 9.01E+09."""
    assert t.frame is not None
    phone = t.frame[column]
    t.flag(
        phone.str.len().gt(MAX_PHONE).fillna(False),
        column,
        f"is longer than {MAX_PHONE} characters",
    )
    maybe = phone.str.contains("e", case=False, regex=False).fillna(False).to_numpy(dtype=bool)
    if maybe.any():  # the regex only where it can match: it is the slow part
        mangled = np.zeros(len(phone), dtype=bool)
        mangled[maybe] = phone[maybe].str.match(_SCIENTIFIC).fillna(False).to_numpy(dtype=bool)
        t.flag(
            mangled,
            column,
            "phone looks like a number mangled by Excel (scientific notation); "
            "format the column as text and export again",
        )


def _users_header(
    path: str | Path,
    encoding: str,
    named: bool,
    opener: Callable[[str | Path, str, bool], _Table] | None = None,
) -> tuple[_Table, list[str]]:
    """Open one users CSV (with :func:`_open`, or ``opener``) and read its header: the
    table and its column names, the required ones under their canonical names; problems
    of the header recorded."""
    t = (opener or _open)(path, encoding, named)
    names = [name or f"column_{i + 1}" for i, name in enumerate(t.header)]
    phones = _phone_columns(names)
    t.phone_column = names[phones[0]] if phones else None
    t.other_phones = [names[i] for i in phones[1:]]
    names = _canonical(names)
    for name in sorted(n for n, count in Counter(names).items() if count > 1):
        t.fail("column name appears more than once in the header", name)
    for name in REQUIRED:
        if t.header and name not in names:
            t.fail(f"required column {name!r} is missing", name, content=f"found: {_names(names)}")
    return t, names


def _users_table(path: str | Path, encoding: str, named: bool) -> _Table:
    """Read one users CSV and check it, collecting every problem."""
    t, names = _users_header(path, encoding, named)
    frame = None if t.problems else _parse(t, names, has_header=True).frame
    if frame is None:
        return t
    unnamed = [n for n, h in zip(names, t.header, strict=True) if not h and frame[n].isna().all()]
    t.frame = frame.drop(columns=unnamed)  # Excel's trailing empty columns
    # " 1 " and "1" are one user: ids are compared without surrounding spaces
    uid = t.frame["user_id"] = t.frame["user_id"].str.strip()
    blank = uid.eq("").fillna(True).to_numpy(dtype=bool)
    t.flag(blank, "user_id", "is empty (required)")
    t.flag(
        uid.str.len().gt(MAX_USER_ID).fillna(False),
        "user_id",
        f"is longer than {MAX_USER_ID} characters, the longest id the store keeps",
    )
    # the header again, as when files were pasted together
    header = dict(zip(names, t.header, strict=True))
    again = (uid.eq(header["user_id"]) & t.frame["phone"].str.strip().eq(header["phone"])).fillna(
        False
    )
    t.flag(
        again.to_numpy(dtype=bool), "user_id", "repeats the header line (files pasted together?)"
    )
    blank |= again.to_numpy(dtype=bool)
    seen = uid.duplicated().to_numpy()
    if (repeat := seen & ~blank).any():
        first_rows = t.rows[~seen][pd.Index(uid[~seen]).get_indexer(uid[repeat])]
        t.flag(
            repeat,
            "user_id",
            [
                f"{_short(u)} repeats row {r} (user_id must be unique)"
                for u, r in zip(uid[repeat], first_rows, strict=True)
            ],
        )
    _check_phones(t, "phone")
    return t


def _cross_file_repeats(tables: list[_Table]) -> None:
    """Flag a user_id already seen in an earlier file (repeats within a file are flagged apart)."""
    seen = pd.DataFrame({"source": pd.Series(dtype=object), "row": pd.Series(dtype=np.int64)})
    for t in (t for t in tables if t.frame is not None):
        uid = t.frame["user_id"]  # type: ignore[index]
        first = (uid.str.strip().ne("").fillna(False) & ~uid.duplicated()).to_numpy(dtype=bool)
        hit = first & uid.isin(seen.index).to_numpy(dtype=bool)
        origin = seen.loc[uid[hit]]
        t.flag(
            hit,
            "user_id",
            [
                f"{_short(u)} is already in {s} row {r}"
                for u, s, r in zip(uid[hit], origin["source"], origin["row"], strict=True)
            ],
        )
        fresh = first & ~hit
        seen = pd.concat(
            [seen, pd.DataFrame({"source": t.source, "row": t.rows[fresh]}, index=uid[fresh].array)]
        )


def _raise(tables: list[_Table]) -> None:
    """Raise one InputError listing the problems of every file, whole-table ones first."""
    problems = [
        p for t in tables for p in sorted(t.problems, key=lambda p: (p.row is not None, p.row or 0))
    ]
    if problems:
        raise InputError(", ".join(t.source for t in tables), problems)


def read_users_csvs(paths: Sequence[str | Path], encoding: str = "auto") -> pd.DataFrame:
    """Read users CSVs into one frame in file and row order (R5, R10), all or nothing."""
    if not paths:
        raise InputError("users CSV", [Problem(None, None, "no file given")])
    # one import holds every file at once: the size limit is for them together
    sizes = [os.stat(p).st_size if os.path.isfile(p) else 0 for p in paths]
    if len(paths) > 1 and sum(sizes) > MAX_FILE:
        together = (
            f"the files are together {_size(sum(sizes))} ({sum(sizes):,} bytes); one import "
            f"reads at most {_size(MAX_FILE)}: import them in several runs"
        )
        raise InputError(", ".join(map(str, paths)), [Problem(None, None, together)])
    tables = [_users_table(p, encoding, named=len(paths) > 1) for p in paths]
    if len(tables) > 1:
        _cross_file_repeats(tables)
    _raise(tables)
    frames = [t.frame for t in tables if t.frame is not None]
    for t in tables:  # every problem is known: the files' text goes before the writes (#12)
        t.data, t._lines = b"", None
    users = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True).astype(STRING)
    # the contract check only: its coerced copy would turn string[pyarrow] into NaN-style str
    validate(Users, users, ", ".join(t.source for t in tables))
    # which header was read as the phone (R3), for the import result and the preview (R4)
    users.attrs["phone_columns"] = list(dict.fromkeys(t.phone_column for t in tables))
    users.attrs["other_phone_columns"] = list(
        dict.fromkeys(name for t in tables for name in t.other_phones)
    )
    return users


# Bytes of CSV text the streamed read parses at a time: about 12,000 rows of a typical
# user table, so memory holds one batch of frames, not the table (#12).
STREAM_BLOCK = 1 << 20


@dataclass
class UsersStream:
    """Users files read batch by batch (#12): :meth:`batches` yields frames of checked
    users in file and row order, as :func:`read_users_csvs` would give them whole.

    Only files without a problem stream: any problem (or any shape the checks need the
    whole table for) raises :class:`Unstreamable`, possibly after some batches were
    yielded (a repeated user_id is known only at the end), and the caller, who wrote
    those batches in one transaction, rolls it back and reads the files with
    :func:`read_users_csvs`, which names every problem exactly."""

    tables: list[_Table]
    names: list[list[str]]  # each file's column names
    columns: list[str]  # every file's columns, in the order pd.concat gives them
    block: int = STREAM_BLOCK
    rows: int = 0  # users yielded so far

    @property
    def phone_columns(self) -> list[str]:
        return list(dict.fromkeys(t.phone_column or "phone" for t in self.tables))

    @property
    def estimate(self) -> int:
        """Users at most (lines after each header), for progress displays."""
        return sum(
            max((t.newlines if t.on_disk else t.data.count(b"\n")) - 1, 0) for t in self.tables
        )

    def batches(self) -> Iterator[pd.DataFrame]:
        ids: list[pa.Array] = []  # compact keys: every user_id, for users must be unique
        for t, names in zip(self.tables, self.names, strict=True):
            for frame in _stream_table(t, names, self.block):
                uid = pa.array(frame["user_id"].array)  # an Array, or a ChunkedArray
                chunks = uid.chunks if isinstance(uid, pa.ChunkedArray) else [uid]
                ids += [chunk.cast(pa.string()) for chunk in chunks]
                self.rows += len(frame)
                if len(self.tables) > 1:
                    frame = frame.reindex(columns=self.columns).astype(STRING)
                yield frame
        every = pa.chunked_array(ids, type=pa.string())
        if pc.count_distinct(every).as_py() != len(every):  # a repeat, in a file or across
            raise Unstreamable("a user_id repeats")
        for t in self.tables:
            t.data, t._lines = b"", None


_HEAD = 1 << 16  # bytes read first: the byte order mark, the line ends, the header line
_CHUNK = 16 << 20  # bytes checked at a time when a file is opened on disk


def _open_on_disk(path: str | Path, encoding: str, named: bool) -> _Table:
    """Open a UTF-8 users file to stream it from disk (#12): its bytes are checked a chunk
    at a time (UTF-8 throughout, no NUL) and only its header line is kept. Anything else
    (CP932, UTF-16, old Mac line ends, blank lines before the header, a file past the size
    limit or not a regular file) raises :class:`Unstreamable`: :func:`_open` reads it."""
    if ENCODINGS.get(encoding.strip().lower().replace("_", "-")) not in ("auto", "utf-8"):
        raise Unstreamable("not UTF-8")
    t = _Table(str(path), named, on_disk=True)
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_FILE:
                raise Unstreamable("not a regular file, or too big")
            head = f.read(_HEAD)
            body = head[len(_BOM) :] if head.startswith(_BOM) else head
            if head.startswith(_UTF16_BOMS) or _utf16_order(head) or b"\n" not in body:
                raise Unstreamable("UTF-16, CR line ends, or a header past the first block")
            if body[:1] in (b"\r", b"\n") or not body.strip():
                raise Unstreamable("blank lines before the header")
            decoder = codecs.getincrementaldecoder("utf-8")()
            chunk = head
            while chunk:
                if b"\x00" in chunk:
                    raise Unstreamable("NUL bytes")
                decoder.decode(chunk)  # a str of one chunk at most, dropped at once
                t.newlines += chunk.count(b"\n")
                chunk = f.read(_CHUNK)
            decoder.decode(b"", final=True)
    except (OSError, UnicodeDecodeError):
        raise Unstreamable("unreadable, or not UTF-8") from None
    first = body[: body.find(b"\n")].decode().rstrip("\r")
    if "\t" in first and "," not in first:
        t.delimiter = "\t"
    t.header = [name.replace("\ufeff", "").strip() for name in _check_header(t, first)]
    return t


def stream_users_csvs(
    paths: Sequence[str | Path], encoding: str = "auto", block: int | None = None
) -> UsersStream:
    """Open users CSVs to read them batch by batch (:class:`UsersStream`); raises
    :class:`Unstreamable` at once for a file the stream leaves to :func:`read_users_csvs`
    (a header problem, an unnamed column, NUL bytes, files over the size limit together)."""
    sizes = [os.stat(p).st_size if os.path.isfile(p) else 0 for p in paths]
    if not paths or (len(paths) > 1 and sum(sizes) > MAX_FILE):
        raise Unstreamable("no file, or the files are too big together")
    tables, names = [], []
    for path in paths:
        named = len(paths) > 1
        try:  # UTF-8 from the file itself; any other text decoded in memory first
            t, columns = _users_header(path, encoding, named, _open_on_disk)
        except Unstreamable:
            t, columns = _users_header(path, encoding, named)
        # an unnamed column is dropped only when empty in the whole file: not streamed
        if t.problems or not all(t.header) or b"\x00" in t.data:
            raise Unstreamable(f"{path}: read whole")
        tables.append(t)
        names.append(columns)
    union = list(dict.fromkeys(name for columns in names for name in columns))
    return UsersStream(tables, names, union, block or STREAM_BLOCK)


def _stream_table(t: _Table, names: list[str], block: int) -> Iterator[pd.DataFrame]:
    """The data rows of one opened users file, ``block`` bytes of text at a time, each
    batch checked as :func:`_users_table` and :func:`read_users_csvs` check the whole
    table (except that user ids are unique across batches, which the stream checks at its
    end); :class:`Unstreamable` at the first problem."""
    try:
        source = pa.OSFile(t.source) if t.on_disk else pa.BufferReader(t.data)
    except OSError:  # gone since it was opened: the whole-file reader says so
        raise Unstreamable(t.source) from None
    with source:
        yield from _stream_batches(t, names, block, source)


def _stream_batches(
    t: _Table, names: list[str], block: int, source: pa.NativeFile
) -> Iterator[pd.DataFrame]:
    cols = [f"c{i}" for i in range(len(names))]
    try:
        reader = pv.open_csv(
            source,  # a UTF-8 byte order mark is skipped
            read_options=pv.ReadOptions(
                use_threads=False, block_size=block, column_names=cols, skip_rows=1
            ),
            # no invalid_row_handler: a row of the wrong width raises (pyarrow's default),
            # and the whole-file reader names it
            parse_options=pv.ParseOptions(delimiter=t.delimiter, newlines_in_values=True),
            convert_options=pv.ConvertOptions(
                column_types=dict.fromkeys(cols, pa.string()),
                null_values=[""],
                strings_can_be_null=True,
            ),
        )
        header = dict(zip(names, t.header, strict=True))
        for batch in reader:
            yield _checked_batch(batch, names, header, t.source)
    except (pa.ArrowException, OSError) as exc:  # a row wider than a block, a broken quote
        raise Unstreamable(str(exc)) from None


def _checked_batch(
    batch: pa.RecordBatch, names: list[str], header: dict[str, str], source: str
) -> pd.DataFrame:
    """One parsed batch as a users frame, or :class:`Unstreamable` at its first problem."""
    for column in batch.columns:
        if pc.any(pc.greater(pc.binary_length(column), MAX_CELL)).as_py():
            raise Unstreamable("a cell is too big")
        if pc.any(pc.match_substring_regex(column, "[\r\n]")).as_py():
            raise Unstreamable("a cell spans lines")  # legal: the whole-file reader checks
    frame = batch.to_pandas(types_mapper={pa.string(): STRING}.get)
    frame.columns = pd.Index(names)
    blank = frame.isna().all(axis=1).to_numpy()  # Excel's trailing ",,," rows
    if blank.any():
        frame = frame[~blank].reset_index(drop=True)
    uid = frame["user_id"] = frame["user_id"].str.strip()
    phone = frame["phone"]
    bad = (
        uid.isna()
        | uid.eq("")
        | uid.str.len().gt(MAX_USER_ID)
        | (uid.eq(header["user_id"]) & phone.str.strip().eq(header["phone"]))
        | phone.str.len().gt(MAX_PHONE)
    )
    if bad.fillna(False).to_numpy(dtype=bool).any():
        raise Unstreamable("a row has a problem")
    maybe = phone.str.contains("e", case=False, regex=False).fillna(False).to_numpy(dtype=bool)
    if maybe.any() and phone[maybe].str.match(_SCIENTIFIC).fillna(False).any():
        raise Unstreamable("a phone mangled by Excel")  # the regex only where it can match
    try:
        validate(Users, frame, source)  # this batch's part of the contract
    except InputError:
        raise Unstreamable("a row breaks the users contract") from None
    return frame


def phone_column_note(users: pd.DataFrame) -> str | None:
    """Which column of a users file was read as the phone number (R3), for a diagnosis
    (R4): ``phone numbers read from column '携帯電話番号' ('電話番号' kept as an attribute)``;
    None for a frame that did not come from :func:`read_users_csvs`."""
    read, others = users.attrs.get("phone_columns"), users.attrs.get("other_phone_columns")
    if not read:
        return None
    note = f"phone numbers read from column{'s' * (len(read) > 1)} {', '.join(map(repr, read))}"
    if others:
        kept = "kept as attributes" if len(others) > 1 else "kept as an attribute"
        note += f" ({', '.join(map(repr, others))} {kept})"
    return note


def read_users_csv(path: str | Path, encoding: str = "auto") -> pd.DataFrame:
    """Read one users CSV: ``user_id``, ``phone`` (raw) and every other column, all as text."""
    return read_users_csvs([path], encoding)


def read_phone_list(path: str | Path, encoding: str = "auto") -> pd.Series:
    """Read an opt-out list (R16): its phone/電話番号 column, or each line of a one-column file."""
    t = _open(path, encoding, named=False)
    keys = [_key(name) for name in t.header]
    at = next((i for i, k in enumerate(keys) if k in PHONE_HEADERS), None)
    column = "phone" if at is None else t.header[at]
    if not t.problems and at is None and len(keys) != 1:
        found = "found: " + ", ".join(repr(n) for n in t.header)
        t.fail("no 'phone' or '電話番号' column, and more than one column", content=found)
    if not t.problems:  # the other columns get names that cannot clash with the phone's
        names = [column if i == at or at is None else f"c{i}" for i in range(len(keys))]
        _parse(t, names, has_header=at is not None)
    if t.frame is not None:
        _check_phones(t, column)
    _raise([t])
    assert t.frame is not None
    phones = t.frame[column].set_axis(t.rows)  # indexed by data row, for error messages
    return phones[phones.notna()].rename("phone")
