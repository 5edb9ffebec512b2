"""Directories kept on an object store but used as local files: KenLM model directories (KenLM and
SentencePiece open local files) and infini-gram indexes (memory-mapped shards).

`fetch` copies the directory under a URL into a local cache, one folder per URL and version, and
reuses it while the objects are unchanged: the Ray workers of a node share one copy. A version is
the listing's sizes and modification times (S3: LastModified), so a rewritten object gives a new
folder and a copy in use is never overwritten. The listing is taken again after the copy: a
directory that changed meanwhile is an error, not a mixed copy.

`publishing` is the other way: work in a local folder, then upload every file with the
directory's card (a model's card.json, an index's index.json) last, after removing the old card
first, so a reader that trusts only a directory with a card never sees a partial set. All paths go
through curate/storage.py (pyarrow's filesystems).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from curate import storage
from curate.storage import LOCAL_CACHE, Location, StorageError

FETCHED = LOCAL_CACHE / "fetched"  # one folder per URL and version
STAGING = LOCAL_CACHE / "staging"  # where a directory for a URL is built before its upload


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def versions(location: Location) -> dict[str, str]:
    """Every file under a directory or prefix, by path relative to it, with its size and
    modification time (which change when an object is written again)."""
    return {rel: f"{info.size}:{info.mtime_ns}" for rel, info in storage.file_infos(location).items()}


def cache_folder(url: str, listing: dict[str, str]) -> Path:
    """Where version `listing` of the directory at `url` is kept on this machine."""
    digest = hashlib.sha256(json.dumps(sorted(listing.items())).encode()).hexdigest()[:16]
    parts = urlsplit(url)
    return FETCHED / parts.scheme / parts.netloc / parts.path.strip("/") / digest


def fetch(location: str | Path, card: str, log=_stderr) -> Path:
    """A local directory with the files of `location`: the location itself when local, else the
    cached copy of its current version (copied now if there is none). `card` is the file that
    makes the directory finished: without it the directory is missing or still being written."""
    location = storage.as_location(location)
    if not storage.is_url(location):
        return Path(location)
    storage.check_bucket(location)
    listing = versions(location)
    if card not in listing:
        raise StorageError(f"{location}: no {card} there (not a finished directory: missing, or being written)")
    target = cache_folder(location, listing)
    if target.is_dir():
        log(f"{location}: unchanged since it was fetched, using {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for rel in listing:
            (partial / rel).parent.mkdir(parents=True, exist_ok=True)
            _copy(storage.join(location, rel), partial / rel)
        if versions(location) != listing:
            raise StorageError(f"{location}: changed while it was being fetched; try again")
        try:
            os.rename(partial, target)
        except OSError:
            if not target.is_dir():  # else another process on this machine has just put it there
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log(f"{location}: fetched {len(listing)} files to {target}")
    return target


@contextlib.contextmanager
def editing(location: str | Path, card: str, log=_stderr) -> Iterator[Path]:
    """A local directory in which to change the directory at `location` (train a model into it,
    calibrate it): the location itself when local. For a URL, a copy of its current version
    (hard links into the fetched copy, which nothing writes in place: files are replaced by
    renames; empty when there is none), uploaded at the end, `card` last, if anything changed."""
    location = storage.as_location(location)
    if not storage.is_url(location):
        yield Path(location)
        return
    old = _current(location)
    with _staging(location) as local:
        if card in old:
            shutil.copytree(fetch(location, card, log), local, copy_function=os.link)
        else:
            local.mkdir()
        before = _snapshot(local)
        yield local
        if _snapshot(local) != before:
            _publish(local, location, card, old, log)


@contextlib.contextmanager
def publishing(url: str, card: str, overwrite: bool, log=_stderr) -> Iterator[Path]:
    """A fresh local folder to build the directory for `url` in (an index); on success its files
    are uploaded, `card` last. An existing directory at `url` is an error unless `overwrite`."""
    old = _current(url)
    if old and not overwrite:
        raise ValueError(f"{url} already exists and is not empty (pass --overwrite to replace it)")
    with _staging(url) as local:
        yield local
        _publish(local, url, card, old, log)


def _current(url: str) -> dict[str, str]:
    storage.check_bucket(url)
    return versions(url)


@contextlib.contextmanager
def _staging(url: str) -> Iterator[Path]:
    STAGING.mkdir(parents=True, exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix="build-", dir=STAGING))
    try:
        yield parent / storage.name(url)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _snapshot(local: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(p.relative_to(local)): (s.st_size, s.st_mtime_ns, s.st_ino) for p in local.rglob("*") if (s := p.stat())
    }


def _publish(local: Path, url: str, card: str, old: dict[str, str], log) -> None:
    """Upload, then keep the local folder as the cached copy of the version just uploaded."""
    upload(local, url, card, old)
    listing = versions(url)
    target = cache_folder(url, listing)
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        os.rename(local, target)
    log(f"uploaded {len(listing)} files to {url} ({card} last)")


def upload(local: Path, url: str, card: str, old: dict[str, str] | None = None) -> None:
    """Every file under `local` to `url`, `card` last. The old card goes first and the objects of
    the old version that the new one lacks next, so the directory is unfinished until the end."""
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    if card not in files:
        raise ValueError(f"{local}: no {card} to upload last")
    old = versions(url) if old is None else old
    if card in old:
        storage.remove(storage.join(url, card))
    for rel in sorted(set(old) - set(files)):
        storage.remove(storage.join(url, rel))
    for rel in [f for f in files if f != card] + [card]:
        _copy(local / rel, storage.join(url, rel))


def _copy(source: Location, target: Location) -> None:
    """One file, streamed (models and index shards may not fit in memory)."""
    source_fs, source_path = storage.resolve(source)
    target_fs, target_path = storage.resolve(target)
    with storage.store_errors(source if storage.is_url(source) else target):
        pafs.copy_files(source_path, target_path, source_fs, target_fs)
