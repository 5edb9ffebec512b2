"""Reading and validating inputs: every bad-input class is quarantined with file, row and reason."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.documents import InputError, ShardSpec, count_records, expand_inputs, plan_shards, read_shard
from curate.storage import write_parquet


def _read(path, max_doc_bytes=1000):
    return read_shard(ShardSpec(0, str(path), 0, count_records(path), None), max_doc_bytes).to_pylist()


BAD_LINES = {
    b'{"id": "j", "text": "unterminated': "invalid JSON",
    b'{"id": "m", "body": "no text"}': "field 'text' is missing",
    b'{"id": "n", "text": null}': "field 'text' is missing",
    b'{"id": "e", "text": "  \\n "}': "field 'text' is empty",
    b'{"id": "i", "text": 42}': "field 'text' is a int, not a string",
    b'["not", "an", "object"]': "record is a JSON list, not an object",
    b'{"id": "u", "text": "caf\xe9"}': "invalid UTF-8 at byte",
    b'{"id": "s", "text": "lone \\ud800 surrogate"}': "not valid UTF-8 (lone surrogate",
    b'{"id": "b", "text": "' + b"x" * 2000 + b'"}': "2000 bytes, over max_doc_bytes=1000",
}


def test_each_bad_input_class_is_quarantined(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"id": "ok", "text": "fine text", "source": "web", "url": "http://x", "lang": "en"}).encode()
    path.write_bytes(b"\n".join([good, b"", *BAD_LINES]) + b"\n")
    rows = _read(path)
    assert len(rows) == 1 + len(BAD_LINES)  # the blank line is not a record
    ok = rows[0]
    assert ok["error"] is None and ok["text"] == "fine text" and ok["source"] == "web"
    assert ok["url"] == "http://x" and json.loads(ok["meta"]) == {"lang": "en"}
    for row, (_line, reason) in zip(rows[1:], BAD_LINES.items()):
        assert row["text"] is None
        assert reason in row["error"], (row["error"], reason)
        assert row["error"].startswith(f"mixed.jsonl row {row['input_row']}:")
        assert row["input_file"] == str(path)
        assert row["raw"]  # the raw input is kept for inspection
    assert [r["input_row"] for r in rows] == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]  # 1-based lines, blank skipped


def test_gzip_parquet_and_generated_ids(tmp_path):
    gz = tmp_path / "a.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(json.dumps({"text": "no id here"}) + "\n")
    rows = _read(gz)
    assert rows[0]["id"] == "a.jsonl.gz:1" and rows[0]["source"] == "a"
    pq_path = tmp_path / "b.parquet"
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["parquet text", None], "score": [1.5, 2.0]}), pq_path)
    rows = _read(pq_path)
    assert rows[0]["error"] is None and json.loads(rows[0]["meta"]) == {"score": 1.5}
    assert rows[1]["error"] == "b.parquet row 1: field 'text' is missing"


def test_expand_inputs_errors_and_order(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.jsonl")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported format"):
        expand_inputs([str(tmp_path / "notes.txt")])
    (tmp_path / "d").mkdir()
    for name in ("b.jsonl", "a.jsonl.gz"):
        (tmp_path / "d" / name).write_bytes(b"")
    assert [p.name for p in expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "*.jsonl")])] == [
        "a.jsonl.gz",
        "b.jsonl",
    ]


def test_shards_cover_every_record_once(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps({"id": str(i), "text": f"doc {i}"}) + "\n" for i in range(23)))
    shards = plan_shards([(path, "src")], shard_docs=10)
    assert [(s.start, s.stop) for s in shards] == [(0, 10), (10, 20), (20, 23)]
    ids = [r["id"] for s in shards for r in read_shard(s, 1000).to_pylist()]
    assert ids == [str(i) for i in range(23)]
    assert {r["source"] for r in read_shard(shards[0], 1000).to_pylist()} == {"src"}


def test_write_parquet_is_atomic_and_checksummed(tmp_path):
    out = tmp_path / "o" / "part.parquet"
    sha = write_parquet(pa.table({"a": [1, 2]}), out)
    assert len(sha) == 64 and pq.read_table(out).num_rows == 2
    assert [p.name for p in out.parent.iterdir()] == ["part.parquet"]
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "ZSTD"
