"""Where flows may read files from: only under ``SMSOPS_IMPORT_ROOT``.

A flow's parameters can be typed by anyone who reaches the Prefect API, and the worker
that runs the flow holds the database URL and the gateway password. So a flow names data,
not any path on the worker: each path must lie under the import root once every symlink
is followed, and may not climb with ``..``. The check runs before a file is opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePath

from smsops.errors import PathError, Text
from smsops.i18n import N_
from smsops.logs import mask_text


def confine(paths: Sequence[str | Path], root: str | Path) -> list[Path]:
    """Each path resolved under ``root`` (a relative path is taken from ``root``), or one
    :class:`PathError` naming the first that is not, before anything is read.

    >>> confine(["users.csv"], "data") == [Path("data/users.csv").resolve()]
    True
    """
    base = Path(root).expanduser().resolve()
    return [_under(str(raw), base) for raw in paths]


def _under(raw: str, base: Path) -> Path:
    shown = mask_text(repr(raw))
    if not raw.strip() or "\0" in raw:
        raise PathError(Text(N_("{path} is not a file name"), path=shown))
    root = repr(str(base))
    if "://" in raw:
        raise PathError(
            Text(
                N_("{path}: only files under the import root {root} can be read"),
                path=shown,
                root=root,
            )
        )
    if ".." in PurePath(raw).parts:
        raise PathError(
            Text(N_("{path}: '..' is not allowed; name a file under {root}"), path=shown, root=root)
        )
    path = Path(raw).expanduser()
    real = (path if path.is_absolute() else base / path).resolve()
    if not real.is_relative_to(base):
        linked = (base / path).absolute().is_relative_to(base)
        line = (
            N_(
                "{path} is outside the import root {root} (SMSOPS_IMPORT_ROOT) through a "
                "symbolic link"
            )
            if linked
            else N_("{path} is outside the import root {root} (SMSOPS_IMPORT_ROOT)")
        )
        raise PathError(Text(line, path=shown, root=root))
    return real
