"""Reading a file's shards in one pass (`read_shards`, one Ray read task per file) gives each shard
exactly the rows a read of the whole file has at its records, with gaps (finished shards) skipped,
for JSON Lines, gzip (a truncated one included) and Parquet."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate import storage
from curate.documents import ShardSpec, count_records, plan_shards, read_shard, read_shards

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "data" / "web" / "openwebtext_1k.jsonl.gz"


def _lines() -> list[bytes]:
    """Real documents with a blank line, invalid JSON and a missing text among them."""
    lines = gzip.open(WEB, "rb").read().splitlines(keepends=True)[:300]
    lines[10:10] = [b"\n", b'{"id": "bad", "text": "unterminated\n', b'{"id": "m", "body": "no text"}\n']
    return lines


@pytest.fixture(params=["jsonl", "jsonl.gz", "truncated.jsonl.gz", "parquet"])
def input_file(request, tmp_path) -> Path:
    kind = request.param
    path = tmp_path / f"docs.{kind}"
    data = b"".join(_lines())
    if kind == "jsonl":
        path.write_bytes(data)
    elif kind == "jsonl.gz":
        path.write_bytes(gzip.compress(data))
    elif kind == "truncated.jsonl.gz":  # the rest after the damage is one quarantined record
        path.write_bytes(gzip.compress(data)[: len(gzip.compress(data)) // 2])
    else:
        rows = [json.loads(line) for line in _lines()[:100] if line.strip() and b"unterminated" not in line]
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_shards_read_in_one_pass_equal_slices_of_the_whole_file(input_file):
    n = count_records(input_file)
    whole = read_shard(ShardSpec(0, str(input_file), 0, n, None), max_doc_bytes=1 << 20)
    assert len(whole) == n
    shards = plan_shards([(storage.as_location(str(input_file)), None)], shard_docs=17)
    assert len(shards) > 4
    for pending in (shards, shards[1::2], shards[-1:]):  # all, every other one (gaps), the last alone
        tables = list(read_shards(pending, max_doc_bytes=1 << 20))
        assert len(tables) == len(pending)
        for spec, table in zip(pending, tables):
            assert table.equals(whole.slice(spec.start, spec.stop - spec.start)), f"shard {spec.shard} differs"


def test_a_file_is_opened_once_for_all_its_shards(tmp_path, monkeypatch):
    path = tmp_path / "docs.jsonl.gz"
    path.write_bytes(gzip.compress(b"".join(_lines())))
    opened = []
    real_open = storage.open_input
    monkeypatch.setattr(storage, "open_input", lambda location: opened.append(location) or real_open(location))
    n = count_records(path)
    shards = plan_shards([(storage.as_location(str(path)), None)], shard_docs=50)
    opened.clear()
    assert sum(len(t) for t in read_shards(shards, max_doc_bytes=1 << 20)) == n
    assert len(shards) > 4 and len(opened) == 1


def test_shards_of_another_file_or_out_of_order_are_refused(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (a, b):
        path.write_bytes(b"".join(_lines()[:40]))
    shards = plan_shards([(storage.as_location(str(a)), None), (storage.as_location(str(b)), None)], shard_docs=10)
    with pytest.raises(ValueError, match="not a later slice"):
        list(read_shards([shards[0], shards[-1]], max_doc_bytes=1 << 20))
    with pytest.raises(ValueError, match="not a later slice"):
        list(read_shards([shards[1], shards[0]], max_doc_bytes=1 << 20))
