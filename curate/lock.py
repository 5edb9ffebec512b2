"""One writer per output directory. A run holds an exclusive `flock` on `OUT/.curate.lock` and
writes its process id, host and start time into it; the kernel drops the lock when the process
ends, however it ends, so the lock of a killed run is stale by construction and is taken over.
(`flock` is per host; on a shared filesystem it holds across hosts only where the filesystem
forwards locks, as NFSv4 does.)

An object store has no flock. On S3 the lock is the object `OUT/.curate.lock`, created with a
conditional PUT (`If-None-Match: *`): of two runs that start together exactly one creates it, on
any host. Nothing drops it when its run is killed, so a holder is judged stale only where that can
be known: a process of this host that is gone (or whose id now belongs to a younger process). It
is then taken over with `If-Match` on the stale object's ETag, so of two runs taking over exactly
one wins, and released with `If-Match` on the run's own ETag. A holder on another host is never
judged: the message says to delete the object once that run is known to be dead. Other object
stores (no conditional writes through pyarrow) get no lock, with a warning."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from curate import storage

LOCK_NAME = ".curate.lock"


class LockedError(ValueError):
    """Another live process is writing the directory."""


@contextlib.contextmanager
def output_lock(directory: storage.Location, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the directory's lock for the block, or raise LockedError naming its holder."""
    if storage.is_url(directory):
        with _object_lock(str(directory), log):
            yield
        return
    directory = Path(directory)
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
        _write(fd, _me())
        try:
            yield
        finally:
            _write(fd, None)  # a released lock holds nothing: only a killed run leaves a holder behind
    finally:
        os.close(fd)  # drops the flock


@contextlib.contextmanager
def _object_lock(directory: str, log: Callable[[str], None]) -> Iterator[None]:
    location = storage.join(directory, LOCK_NAME)
    if not storage.supports_conditional_writes(directory):
        log(f"no lock on {directory} (this store offers no conditional writes): start one run per output at a time")
        yield
        return
    me = json.dumps(_me()).encode()
    etag = storage.create_exclusive(location, me)
    while etag is None:
        found = storage.read_with_tag(location)
        if found is None:  # released between the two requests: try again
            etag = storage.create_exclusive(location, me)
            continue
        data, stale_tag = found
        holder = _parse(data)
        if not _is_stale(holder):
            wait = "wait for it to finish, or use another --out"
            if holder and holder.get("host") != socket.gethostname():
                wait += f" (if that run is dead, delete {location})"
            raise LockedError(f"{directory} is being written by {_describe(holder)}: {wait}")
        etag = storage.replace_if(location, me, stale_tag)
        if etag is not None:
            log(f"taking over the lock of {_describe(holder)}, which ended without releasing it")
    try:
        yield
    finally:
        storage.remove_if(location, etag)  # only our own lock: never one another run took over


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}


def _parse(data: bytes) -> dict | None:
    try:
        holder = json.loads(data) if data.strip() else None
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _is_stale(holder: dict | None) -> bool:
    """A holder of this host whose process is gone, or whose id now names a process started after
    the lock was taken. Unreadable holders and other hosts' are never judged stale."""
    if not holder or holder.get("host") != socket.gethostname():
        return False
    try:
        return psutil.Process(int(holder["pid"])).create_time() > float(holder["started"]) + 1
    except psutil.NoSuchProcess:
        return True
    except (KeyError, TypeError, ValueError, psutil.Error):
        return False


def _holder(fd: int) -> dict | None:
    return _parse(os.pread(fd, 4096, 0))


def _write(fd: int, holder: dict | None) -> None:
    os.ftruncate(fd, 0)
    if holder is not None:
        os.pwrite(fd, json.dumps(holder).encode(), 0)


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["started"]))
    return f"process {holder['pid']} on {holder['host']} (started {started})"
