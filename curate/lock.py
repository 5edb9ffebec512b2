"""One writer per output directory. A run holds an exclusive `flock` on `OUT/.curate.lock` and
writes its process id, host and start time into it; the kernel drops the lock when the process
ends, however it ends, so the lock of a killed run is stale by construction and is taken over.
(`flock` is per host; on a shared filesystem it holds across hosts only where the filesystem
forwards locks, as NFSv4 does.)"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_NAME = ".curate.lock"


class LockedError(ValueError):
    """Another live process is writing the directory."""


@contextlib.contextmanager
def output_lock(directory: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the directory's lock for the block, or raise LockedError naming its holder."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"{directory} is being written by {_describe(_holder(fd))}: wait for it to finish, or use another --out"
            ) from None
        if previous := _holder(fd):
            log(f"taking over the lock of {_describe(previous)}, which ended without releasing it")
        _write(fd, {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        try:
            yield
        finally:
            _write(fd, None)  # a released lock holds nothing: only a killed run leaves a holder behind
    finally:
        os.close(fd)  # drops the flock


def _holder(fd: int) -> dict | None:
    data = os.pread(fd, 4096, 0)
    try:
        return json.loads(data) if data.strip() else None
    except ValueError:
        return None


def _write(fd: int, holder: dict | None) -> None:
    os.ftruncate(fd, 0)
    if holder is not None:
        os.pwrite(fd, json.dumps(holder).encode(), 0)


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["started"]))
    return f"process {holder['pid']} on {holder['host']} (started {started})"
