"""Atomic writes: every output file is written under a temporary name beside its place and
renamed over it once complete, so a reader (or a resumed run) never sees half a file. A full disk
is reported as a `NoSpaceError` that names the file and the filesystem, not a bare OSError."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NoSpaceError(OSError):
    """The disk (or quota) filled up while writing `path`."""

    def __init__(self, path: str | Path):
        super().__init__(errno.ENOSPC, f"no space left on {mount_point(path)} while writing {path}", str(path))

    def __str__(self) -> str:
        return self.strerror


def mount_point(path: str | Path) -> Path:
    """The filesystem a path is on, named by its mount point (the nearest existing ancestor's)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path):
        path = path.parent
    return path


def is_no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in NO_SPACE


def no_space_message(error: OSError) -> str:
    """`no space left on MOUNT while writing FILE` for any full-disk error, named as well as it can be."""
    if isinstance(error, NoSpaceError):
        return str(error)
    if error.filename:
        return str(NoSpaceError(error.filename))
    return f"no space left on the device while writing ({error})"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield the temporary path to write; it replaces `path` when the block ends normally and is
    removed when it raises. The name holds the process id, so writers never share one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if is_no_space(e) and not isinstance(e, NoSpaceError):
            raise NoSpaceError(path) from e
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
