"""Shards read from their planned offset (issue 14): every shard of a multi-shard file reads the
same rows as reading the file from its start and skipping to the shard, and the shards together
the same rows as one sequential read, on the shipped samples and on hostile files (a BOM, blank
lines and CRLF at shard boundaries, invalid UTF-8 and JSON, a damaged .gz tail), a .gz with and
without its seek index (real indexed_gzip indexes, seek points closer than a run's so that small
files have several), locally and on a real S3-compatible server. Real files, no Ray."""

import dataclasses
import gzip
import hashlib
import json
import random
import shutil
import zlib

import pytest

from curate.documents import (
    ShardSpec,
    _read_gz_index,
    count_records,
    index_gz_shards,
    is_unreadable,
    plan_shards,
    read_shard,
)

from . import s3_support
from .conftest import DATA

MAX_DOC_BYTES = 1000
SPACING = 64 << 10  # seek points every 64 KiB of data


def _hostile_lines() -> bytes:
    """Records of every kind, with blank lines (some whitespace-only, some CRLF) between them."""
    rng = random.Random(14)
    records = [
        json.dumps({"id": f"d{i}", "text": f"document {i} " + "é" * rng.randrange(0, 40)}).encode() for i in range(60)
    ]
    records[5] = b'{"id": "u", "text": "caf\xe9"}'  # invalid UTF-8
    records[11] = b'{"id": "j", "text": "unterminated'
    records[12] = b'["not", "an", "object"]'
    records[20] = b'{"id": "big", "text": "' + b"x" * 2000 + b'"}'
    out = b"\xef\xbb\xbf"
    for record in records:
        out += record + rng.choice([b"\n", b"\r\n", b"\n\n", b"\n  \n", b"\n\t\r\n\n"])
    return out


def _sequential(path) -> list[dict]:
    return read_shard(ShardSpec(0, str(path), 0, count_records(path), None), MAX_DOC_BYTES).to_pylist()


def _check_shards(path, shard_docs: int, index_dir=None) -> list[ShardSpec]:
    """Each planned shard (a .gz's with a seek index in `index_dir`) reads what the same slice
    read from the file's start does, and all of them what one sequential read does."""
    shards = plan_shards([(path, None)], shard_docs)
    if index_dir is not None:
        shards = index_gz_shards(shards, index_dir, min_spacing=SPACING)
    assert len(shards) > 1
    rows = []
    for spec in shards:
        got = read_shard(spec, MAX_DOC_BYTES).to_pylist()
        from_start = dataclasses.replace(spec, offset=0, line=0, gz_index=None)
        assert got == read_shard(from_start, MAX_DOC_BYTES).to_pylist(), (path.name, spec)
        assert len(got) == spec.stop - spec.start  # the plan's accounting holds
        rows += got
    assert rows == _sequential(path)
    return shards


def _samples(tmp_path):
    """The shipped samples, and the web sample's files unzipped."""
    paths = [DATA / "samples" / "broken.jsonl", DATA / "samples" / "openwebtext_short12.jsonl"]
    paths += sorted((DATA / "web").glob("*.jsonl.gz"))
    for gz in sorted((DATA / "web").glob("*.jsonl.gz")):
        plain = tmp_path / gz.name.removesuffix(".gz")
        with gzip.open(gz) as f, open(plain, "wb") as out:
            shutil.copyfileobj(f, out)
        paths.append(plain)
    return paths


def test_shards_of_the_shipped_samples_read_from_their_offsets(tmp_path):
    for path in _samples(tmp_path):
        n = count_records(path)
        for shard_docs in (3, 300) if n < 50 else (300,):  # from the start is quadratic: few shards
            if n <= shard_docs:
                continue
            shards = _check_shards(path, shard_docs, tmp_path / "index")
            assert all(s.offset > 0 and s.line >= s.start for s in shards[1:])  # read from an offset
            if path.name.endswith(".gz"):  # with an index that has points inside the file
                assert all(s.gz_index for s in shards) and len(_read_gz_index(shards[-1]) or b"") > 2 * (32 << 10)
            else:
                assert not any(s.gz_index for s in shards)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_bom_blank_lines_and_bad_records_at_shard_boundaries(tmp_path, suffix):
    data = _hostile_lines()
    path = tmp_path / f"hostile{suffix}"
    path.write_bytes(gzip.compress(data) if suffix.endswith(".gz") else data)
    for shard_docs in (1, 2, 7):
        for index_dir in (None, tmp_path / "index"):
            shards = _check_shards(path, shard_docs, index_dir)
            assert all(s.offset > 0 for s in shards[1:])
    rows = _sequential(path)
    assert rows[0]["id"] == "d0" and rows[0]["error"] is None  # the BOM is skipped
    # input_row is the physical line: blank lines are counted, CRLF is one line break
    physical = [n for n, line in enumerate(data.split(b"\n")[:-1], start=1) if line.strip()]
    assert [r["input_row"] for r in rows] == physical
    assert [r["input_row"] for r in rows if r["error"]] == [physical[k] for k in (5, 11, 12, 20)]


def _damaged_gz(path, how: str) -> None:
    data = _hostile_lines() * 20
    if how == "truncated":
        compressed = gzip.compress(data)
        path.write_bytes(compressed[: len(compressed) * 2 // 3])
        return
    # corrupt deflate data in the middle, where a seek would decompress in other pieces: after a
    # full flush the next block starts on a byte; 0xff there is a block of the reserved type
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip wrapper
    head = packer.compress(data[: len(data) // 2]) + packer.flush(zlib.Z_FULL_FLUSH)
    tail = packer.compress(data[len(data) // 2 :]) + packer.flush()
    path.write_bytes(head + b"\xff" + tail[1:])


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
def test_a_damaged_gz_is_read_from_its_start_and_its_rest_quarantined_as_before(tmp_path, how):
    path = tmp_path / f"{how}.jsonl.gz"
    _damaged_gz(path, how)
    shards = _check_shards(path, 50, tmp_path / "index")
    assert all(s.offset == 0 and s.line == 0 and s.gz_index is None for s in shards)
    last = read_shard(shards[-1], MAX_DOC_BYTES).to_pylist()[-1]
    assert is_unreadable(last["error"]) and "bytes of decompressed data" in last["error"]
    with pytest.raises(zlib.error if how == "corrupt" else EOFError):
        gzip.decompress(path.read_bytes())


def test_shards_on_object_storage_read_from_their_offsets(tmp_path):
    local = tmp_path / "hostile.jsonl"
    local.write_bytes(_hostile_lines())
    local_gz = tmp_path / "hostile.jsonl.gz"
    local_gz.write_bytes(gzip.compress(_hostile_lines()))
    with s3_support.serving() as s3:
        bucket = s3.bucket("offsets")
        for path in (local, local_gz):
            url = s3.upload(path, f"{bucket}/in/{path.name}")
            shards = index_gz_shards(plan_shards([(url, None)], 7), f"{bucket}/work/gz-index", min_spacing=SPACING)
            assert [(s.start, s.offset, s.line) for s in shards] == [
                (s.start, s.offset, s.line) for s in plan_shards([(path, None)], 7)
            ]
            assert all(s.offset > 0 for s in shards[1:])
            assert all(_read_gz_index(s) for s in shards[1:]) == path.name.endswith(".gz")
            rows = [r for spec in shards for r in read_shard(spec, MAX_DOC_BYTES).to_pylist()]
            assert [{**r, "input_file": None} for r in rows] == [{**r, "input_file": None} for r in _sequential(path)]


def test_a_gz_shard_whose_index_this_worker_cannot_read_decompresses_from_the_start(tmp_path):
    path = tmp_path / "hostile.jsonl.gz"
    path.write_bytes(gzip.compress(_hostile_lines() * 20))
    shards = index_gz_shards(plan_shards([(path, None)], 100), tmp_path / "index", min_spacing=SPACING)
    index = _read_gz_index(shards[1])
    assert index and shards[1].gz_index.endswith(f"hostile.jsonl.gz.{hashlib.sha256(index).hexdigest()}.gzidx")
    expected = [read_shard(s, MAX_DOC_BYTES).to_pylist() for s in shards]
    shutil.rmtree(tmp_path / "index")  # e.g. a work folder on the driver's disk, a read task on another node
    assert all(_read_gz_index(s) is None for s in shards)
    assert [read_shard(s, MAX_DOC_BYTES).to_pylist() for s in shards] == expected
