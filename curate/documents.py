"""Documents in and out: finding input files, reading and validating records, writing Parquet.

Every input record becomes exactly one row: a valid document, or a quarantined row that keeps the
error, the file and the line (1-based line for JSON Lines, 0-based row for Parquet) and the raw
input. Blank lines in JSON Lines files are not records and are not counted; a UTF-8 byte-order
mark at the start of a file is skipped, as most JSON readers do.

Inputs may be local paths or object-store URLs (`s3://bucket/prefix/*.jsonl.gz`): every file
operation goes through `curate.storage`, on the driver and in Ray's read tasks alike.

A shard of a JSON Lines file is read from the byte where it starts, noted while planning (a
`.gz` through a seek index), not by reading the file up to it.

A damaged file (a truncated or fake `.gz`, a Parquet file that will not open) does not stop a job:
the records before the damage are read as usual, and the unreadable rest of the file becomes one
more quarantined record that names the file and the line (or row) where reading failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import sys
import zlib
from collections.abc import Iterator
from typing import IO

import indexed_gzip
import pyarrow as pa

from curate import storage
from curate.storage import Location

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
RAW_KEEP_CHARS = 2000
BOM = b"\xef\xbb\xbf"
# what a quarantined record of a damaged file says: the manifest finds these (`is_unreadable`)
UNREADABLE = "unreadable from here on"
# errors of a damaged file: truncated gzip (EOFError), not gzip or a bad CRC (BadGzipFile, an
# OSError), corrupt deflate data (zlib.error), a failing disk (OSError), a bad Parquet file
READ_ERRORS = (EOFError, OSError, zlib.error, pa.ArrowException)
# a .gz's seek index (indexed_gzip): a point every 4 MiB of decompressed data or more, at most
# about 256 of them (each holds 32 KiB), so a shard decompresses at most that much before its start
GZ_INDEX_SPACING = 4 << 20
GZ_INDEX_POINTS = 256

# One schema for every row read: valid documents have `error` null, quarantined rows have it set.
ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("meta", pa.large_string()),  # every other input field, as JSON
        ("input_file", pa.string()),
        ("input_row", pa.int64()),
        ("error", pa.string()),
        ("raw", pa.large_string()),
    ]
)


class InputError(ValueError):
    """A problem with the inputs as a whole (missing file, unsupported format)."""


def expand_inputs(patterns: list[str]) -> list[Location]:
    """Files, folders or prefixes (searched recursively) and globs, in a stable order, without repeats."""
    found: list[Location] = []
    for pattern in patterns:
        path = storage.as_location(pattern)
        if storage.is_dir(path):
            matches = [p for p in storage.list_files(path) if _is_supported(p)]
            if not matches:
                raise InputError(f"input folder {pattern} holds no .jsonl, .jsonl.gz or .parquet files")
        elif storage.is_file(path):
            if not _is_supported(path):
                raise InputError(f"input {pattern}: unsupported format (use .jsonl, .jsonl.gz or .parquet)")
            matches = [path]
        else:
            matches = [p for p in storage.glob(pattern) if _is_supported(p)]
            if not matches:
                raise InputError(f"input {pattern}: no such file, folder or matching glob")
        found.extend(storage.absolute(m) for m in matches)
    return list(dict.fromkeys(found))


def _is_supported(path: Location) -> bool:
    return storage.name(path).endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES)


def default_source(path: Location) -> str:
    name = storage.name(path)
    for suffix in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def count_records(path: Location) -> int:
    """Records in a file: non-blank lines of JSON Lines, rows of Parquet; the unreadable rest of
    a damaged file counts as one."""
    if storage.name(path).endswith(PARQUET_SUFFIXES):
        try:
            return storage.parquet_file(path).metadata.num_rows
        except READ_ERRORS:
            return 1
    return sum(1 for _ in _lines(path))


@dataclasses.dataclass(frozen=True)
class Unreadable:
    """Where reading a damaged file failed: the rest of the file, one quarantined record."""

    error: str


def is_unreadable(error: str) -> bool:
    """Whether a quarantine `error` is the unreadable rest of a damaged file."""
    return UNREADABLE in error


def _lines(
    path: Location, offset: int = 0, line: int = 0, gz_index: bytes | None = None
) -> Iterator[tuple[int, int, bytes | Unreadable]]:
    """(line number, byte offset, line) for the non-blank lines of a JSON Lines file from byte
    `offset` of its (gunzipped) data, after `line` lines, a leading BOM skipped; reading stops at
    damage, which comes last as an `Unreadable` at the line that failed. An object store that
    fails (a StorageError, not one of READ_ERRORS) stops the run instead."""
    line_no = line
    gz = storage.name(path).endswith(".gz")
    try:
        with _open_at(path, offset, gz_index) as f:
            for line_no, data in enumerate(f, start=line + 1):
                start, offset = offset, offset + len(data)
                if line_no == 1 and data.startswith(BOM):
                    data = data[len(BOM) :]
                if data.strip():
                    yield line_no, start, data
    except READ_ERRORS as e:
        where = f"after {offset} bytes" + (" of decompressed data" if gz else "")
        yield line_no + 1, offset, Unreadable(f"{type(e).__name__}: {e} ({where})")


@contextlib.contextmanager
def _open_at(path: Location, offset: int, gz_index: bytes | None) -> Iterator[IO[bytes]]:
    """The file's (gunzipped) data from byte `offset`: a plain file seeks there; a .gz starts at
    the seek point of its index before it, or without one decompresses up to it from the start."""
    if gz_index is None:
        with storage.open_input(path) as f:
            if offset:
                f.seek(offset)
            yield f
        return
    with storage.open_raw(path) as raw, indexed_gzip.IndexedGzipFile(fileobj=raw, auto_build=False) as f:
        f.import_index(fileobj=io.BytesIO(gz_index))
        f.seek(offset)
        yield f


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """A slice [start, stop) of one input file's records: the unit of work and of resume."""

    shard: int
    path: str
    start: int
    stop: int
    source: str | None  # overrides the records' own `source` when set
    # JSON Lines: the byte of the (gunzipped) data where record `start` begins, on line `line` + 1,
    # so that a shard is read without re-reading the file before it; 0: read from the file's start
    offset: int = 0
    line: int = 0
    # a .gz's seek index (index_gz_shards), without which it is decompressed from its start
    gz_index: str | None = None


def plan_shards(files: list[tuple[Location, str | None]], shard_docs: int) -> list[ShardSpec]:
    shards: list[ShardSpec] = []
    for path, source in files:
        for start, stop, offset, line in _slices(path, shard_docs):
            shards.append(ShardSpec(len(shards), str(path), start, stop, source, offset, line))
    return shards


def _slices(path: Location, shard_docs: int) -> list[tuple[int, int, int, int]]:
    """(start, stop, offset, line) of each shard of a file, in one pass over it. A damaged file's
    shards are read from its start, as here: after a seek a .gz is decompressed in other pieces,
    and corrupt deflate data can then fail a few lines earlier or later than it did here."""
    if storage.name(path).endswith(PARQUET_SUFFIXES):
        n = count_records(path)
        return [(start, min(n, start + shard_docs), 0, 0) for start in range(0, n, shard_docs)]
    starts: list[tuple[int, int]] = []
    n, damaged = 0, False
    for n, (line_no, offset, data) in enumerate(_lines(path), start=1):
        if (n - 1) % shard_docs == 0:
            starts.append((offset, line_no - 1))
        damaged = isinstance(data, Unreadable)
    return [
        (start, min(n, start + shard_docs), *((0, 0) if damaged else where))
        for start, where in zip(range(0, n, shard_docs), starts)
    ]


def index_gz_shards(
    shards: list[ShardSpec], index_dir: Location, min_spacing: int = GZ_INDEX_SPACING
) -> list[ShardSpec]:
    """The shards, those of a .gz that start at an offset with a seek index of their file, written
    to `index_dir` (where every read task can reach it: the run's work folder), so that a shard
    does not decompress the whole file before it. An index is named by its sha256: a read task
    that finds an index by that name (even one left on its node by another run) has this one."""
    last: dict[str, int] = {}
    for spec in shards:
        if spec.offset and storage.name(spec.path).endswith(".gz"):
            last[spec.path] = max(last.get(spec.path, 0), spec.offset)
    indexes = {}
    for path, end in last.items():
        index = _gz_index(storage.as_location(path), max(min_spacing, end // GZ_INDEX_POINTS))
        if index is not None:
            key = hashlib.sha256(index).hexdigest()
            indexes[path] = str(storage.join(index_dir, f"{storage.name(path)}.{key}.gzidx"))
            storage.write_bytes(indexes[path], index)
    return [dataclasses.replace(s, gz_index=indexes[s.path]) if s.path in indexes else s for s in shards]


def _gz_index(path: Location, spacing: int) -> bytes | None:
    """A seek index of a .gz by indexed_gzip (a seek point every `spacing` bytes of data, each with
    the 32 KiB that restart decompression there): one more pass over the file, in C, where each
    shard would decompress everything before it. None if indexed_gzip cannot read the file."""
    try:
        with storage.open_raw(path) as raw, indexed_gzip.IndexedGzipFile(fileobj=raw, spacing=spacing) as f:
            f.build_full_index()
            index = io.BytesIO()
            f.export_index(fileobj=index)
    except READ_ERRORS:
        return None
    return index.getvalue()


def _read_gz_index(spec: ShardSpec) -> bytes | None:
    """The shard's .gz index, or None (decompress from the start) where this worker cannot read
    it, e.g. a work folder on the driver's own disk."""
    if spec.gz_index is None or not spec.offset:
        return None
    try:
        return storage.read_bytes(storage.as_location(spec.gz_index))
    except (OSError, storage.StorageError):
        return None


def read_shard(spec: ShardSpec, max_doc_bytes: int) -> pa.Table:
    """Read and validate one shard into ROW_SCHEMA rows."""
    path = storage.as_location(spec.path)
    fallback_source = spec.source or default_source(path)
    rows = [
        _validate(record, position, path, spec.source, fallback_source, max_doc_bytes)
        for position, record in _records(path, spec.start, spec.stop, spec.offset, spec.line, _read_gz_index(spec))
    ]
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def _records(
    path: Location, start: int, stop: int, offset: int = 0, line: int = 0, gz_index: bytes | None = None
) -> Iterator[tuple[int, bytes | dict | Unreadable]]:
    """(position, record) for records start..stop-1: raw line bytes, a Parquet row dict, or the
    `Unreadable` rest of a damaged file. JSON Lines are read from `offset` (see ShardSpec)."""
    if storage.name(path).endswith(PARQUET_SUFFIXES):
        try:
            rows = storage.read_parquet(path).slice(start, stop - start).to_pylist()
        except READ_ERRORS as e:  # every row of the slice is counted, so every row is quarantined
            for position in range(start, stop):
                yield position, Unreadable(f"{type(e).__name__}: {e}")
            return
        yield from enumerate(rows, start=start)
        return
    for index, (line_no, _, data) in enumerate(_lines(path, offset, line, gz_index), start=start if offset else 0):
        if index >= stop:
            break
        if index >= start:
            yield line_no, data


def _validate(
    record: bytes | dict,
    position: int,
    path: Location,
    source_override: str | None,
    fallback_source: str,
    max_doc_bytes: int,
) -> dict:
    where = {"input_file": str(path), "input_row": position}
    if isinstance(record, Unreadable):
        error = f"{UNREADABLE} ({record.error}); the rest of the file counts as this one record"
        return _quarantine(where, fallback_source, error, b"")
    raw = record if isinstance(record, dict) else None
    if isinstance(record, bytes):
        try:
            line = record.decode("utf-8")
        except UnicodeDecodeError as e:
            return _quarantine(where, fallback_source, f"invalid UTF-8 at byte {e.start}", record)
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            return _quarantine(where, fallback_source, f"invalid JSON: {e.msg} at column {e.colno}", record)
        except RecursionError:
            depth = sys.getrecursionlimit()
            return _quarantine(where, fallback_source, f"invalid JSON: nesting deeper than {depth} levels", record)
        except ValueError as e:  # e.g. an integer over Python's 4300-digit limit
            return _quarantine(where, fallback_source, f"invalid JSON: {e}", record)
        if not isinstance(raw, dict):
            return _quarantine(where, fallback_source, f"record is a JSON {type(raw).__name__}, not an object", record)
    assert raw is not None
    source = source_override or (
        raw.get("source") if isinstance(raw.get("source"), str) and raw.get("source") else fallback_source
    )
    doc_id = raw.get("id")
    doc_id = f"{storage.name(path)}:{position}" if doc_id is None or doc_id == "" else str(doc_id)
    text = raw.get("text")
    error = None
    if "text" not in raw or text is None:
        error = "field 'text' is missing"
    elif not isinstance(text, str):
        error = f"field 'text' is a {type(text).__name__}, not a string"
    elif not text.strip():
        error = "field 'text' is empty"
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as e:
            error = f"field 'text' is not valid UTF-8 (lone surrogate at character {e.start})"
        else:
            if size > max_doc_bytes:
                error = f"field 'text' is {size} bytes, over max_doc_bytes={max_doc_bytes}"
    if error:
        return _quarantine(where, source, error, record, doc_id)
    url = raw.get("url")
    meta = {k: v for k, v in raw.items() if k not in ("id", "text", "source", "url")}
    return {
        "id": doc_id,
        "text": text,
        "source": source,
        "url": url if isinstance(url, str) else None,
        "meta": json.dumps(meta, ensure_ascii=False, default=str) if meta else None,
        **where,
        "error": None,
        "raw": None,
    }


def _quarantine(where: dict, source: str, error: str, record: bytes | dict, doc_id: str | None = None) -> dict:
    if isinstance(record, bytes):
        raw = record.decode("utf-8", errors="replace")
    else:
        raw = json.dumps(record, ensure_ascii=False, default=str)
    return {
        "id": doc_id or f"{storage.name(where['input_file'])}:{where['input_row']}",
        "text": None,
        "source": source,
        "url": None,
        "meta": None,
        **where,
        "error": f"{storage.name(where['input_file'])} row {where['input_row']}: {error}",
        "raw": raw[:RAW_KEEP_CHARS].rstrip("\n"),
    }


def read_texts(patterns: list[str]) -> Iterator[dict]:
    """Valid documents of the given inputs as dicts (id, text, source, meta fields merged back):
    for model training and calibration, where quarantined records are reported and skipped."""
    for path in expand_inputs(patterns):
        n = count_records(path)
        table = read_shard(ShardSpec(0, str(path), 0, n, None), max_doc_bytes=1 << 40)
        for row in table.to_pylist():
            if row["error"]:
                print(f"skipping {row['error']}")
                continue
            doc = {"id": row["id"], "text": row["text"], "source": row["source"]}
            if row["meta"]:
                doc.update(json.loads(row["meta"]))
            yield doc
