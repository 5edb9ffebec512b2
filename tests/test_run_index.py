"""A job whose last step cuts repeated spans and builds an infini-gram index of the kept documents."""

import gzip
import json

import polars as pl
import pyarrow.parquet as pq

from indexes.engine import Engine
from pipelines.indexing import index_outputs
from pipelines.result import RunResult
from pipelines.runner import run_job
from pipelines.spec import IndexSpec, load_job

from .conftest import DATA


def test_dedup_then_index(tmp_path):
    with gzip.open(DATA / "web" / "openwebtext_1k.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(next(f)) for _ in range(30)]
    docs.append({"id": "copy-of-3", "text": docs[3]["text"]})  # an exact duplicate
    quoted = docs[5]["text"][:600]
    docs.append({"id": "quotes-5", "text": "Someone wrote this long passage:\n" + quoted + "\nAnd that was all."})
    inputs = tmp_path / "docs.jsonl"
    inputs.write_text("".join(json.dumps(d) + "\n" for d in docs))
    job = tmp_path / "job.yaml"
    job.write_text(
        json.dumps(
            {
                "name": "idx",
                "inputs": [{"path": str(inputs)}],
                "shard_docs": 10,
                "index": {"vocab": 2000, "dedup_min_tokens": 20},
            }
        )
    )
    manifest = run_job(load_job(job), out=tmp_path / "out")

    assert manifest["input"] == 32 and manifest["rejected"] == {"dedup": 1}
    rejected = pl.read_parquet(tmp_path / "out" / "rejected" / "*.parquet")
    assert rejected["id"].to_list() == ["copy-of-3"] and rejected["reject_reason"][0].startswith("all ")
    kept = pl.read_parquet(tmp_path / "out" / "kept" / "*.parquet")
    quotes = kept.filter(pl.col("id") == "quotes-5").row(0, named=True)
    assert quotes["dedup_removed_tokens"] > 0
    assert quoted[:300] not in quotes["text"] and quotes["text"].startswith("Someone wrote")
    assert kept.filter(pl.col("id") == "owt-0003")["dedup_removed_tokens"][0] == 0  # the first occurrence stays

    index = manifest["index"]
    assert index["dedup"]["documents_rejected"] == 1 and index["card"]["documents"] == len(kept) == 31
    engine = Engine(index["dir"])
    phrase = engine.tokenize(docs[5]["text"])[5:40]
    assert engine.count(phrase)["count"] == 1  # only the original keeps the quoted passage
    for f in (tmp_path / "out" / "kept").glob("*.parquet"):
        assert manifest["shards"][f"kept/{f.name}"]["rows"] == pq.read_metadata(f).num_rows


def test_dedup_drops_emptied_synthetic_documents_without_charging_the_input(tmp_path):
    with gzip.open(DATA / "web" / "openwebtext_1k.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(next(f)) for _ in range(8)]
    rows = [{"id": d["id"], "text": d["text"], "source": "owt", "parent_id": None} for d in docs]
    rows.append(
        {"id": "owt-0001#wrap-qa", "text": docs[1]["text"], "source": "owt", "parent_id": "owt-0001"}
    )  # a rephrase that copied its parent
    rows.append({"id": "copy-of-2", "text": docs[2]["text"], "source": "owt", "parent_id": None})
    kept = pl.DataFrame(rows)
    part = tmp_path / "kept" / "part-00000.parquet"
    part.parent.mkdir()
    kept.write_parquet(part)
    split = RunResult(
        files={"kept/part-00000.parquet": {"rows": len(kept)}}, params=[], seconds={}, scores=pl.DataFrame(),
        kept=kept.drop("text"), rejected=pl.DataFrame(), quarantine=pl.DataFrame(),
        synthetic=kept.filter(pl.col("parent_id").is_not_null()).drop("text"),
    )  # fmt: skip
    result = index_outputs(IndexSpec(vocab=1000, dedup_min_tokens=20), tmp_path, split, log=lambda *_: None)
    assert result.index["dedup"]["documents_rejected"] == 1 and result.index["dedup"]["synthetic_dropped"] == 1
    assert result.rejected["id"].to_list() == ["copy-of-2"]
    assert len(result.synthetic) == 0
    assert sorted(result.kept["id"]) == sorted(d["id"] for d in docs)
    assert (
        result.files["kept/part-00000.parquet"]["rows"] == len(docs)
        and result.files["rejected/dedup-part-00000.parquet"]["rows"] == 1
    )
    assert (
        len(split.rejected) == 0 and len(split.synthetic) == 1 and split.index is None
    )  # returned, not edited in place
