"""Random mixtures of valid records and garbage through `curate run` (issue 16): whatever the
input, every record is accounted for (input = kept + rejected + quarantined), every valid record
is kept, or rejected with a stage and a reason, unchanged, and no traceback reaches the terminal.
The command runs in this process, so one real local Ray serves every example."""

import gzip
import json
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from curate import cli

MAX_DOC_BYTES = 50_000
TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=120).filter(str.strip)


def _wrong(value) -> bytes:
    return json.dumps({"id": "g", "text": value}).encode()


GARBAGE = st.one_of(
    st.binary(min_size=1, max_size=120),  # random bytes (with newlines: several lines)
    st.builds(lambda t, n: json.dumps({"id": "g", "text": t}).encode()[: n + 1], TEXT, st.integers(0, 30)),  # cut
    st.just(b'{"id": "g", "text": "' + b"x" * (MAX_DOC_BYTES + 10) + b'"}'),  # over max_doc_bytes
    st.just(b'{"id": "g", "text": "raw \x00 NUL"}'),
    st.just(b"\x00" * 64),
    st.sampled_from([b"[" * 3000, b'{"a":' * 5000, b"[" * 100_000]),  # deep nesting
    st.builds(lambda t: b"\xef\xbb\xbf" + _wrong(t), TEXT),  # a BOM inside the file
    st.sampled_from([_wrong(5), _wrong(None), _wrong(["a"]), _wrong({"t": 1}), _wrong(""), b"[1, 2]", b'"text"']),
)
# ("valid", text, repeat an earlier id?) or ("garbage", bytes)
RECORD = st.one_of(st.tuples(st.just("valid"), TEXT, st.booleans()), st.tuples(st.just("garbage"), GARBAGE))
FILE = st.fixed_dictionaries(
    {
        "records": st.lists(RECORD, min_size=1, max_size=25),
        "gzip": st.booleans(),
        "bom": st.booleans(),
        "crlf": st.booleans(),
    }
)


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(files=st.lists(FILE, min_size=1, max_size=3), damaged=st.booleans())
@example(  # every kind of trouble at once, besides the random mixtures
    files=[
        {
            "records": [
                ("valid", "first", False),
                ("garbage", b"\x00" * 64),
                ("garbage", b"[" * 100_000),
                ("valid", "a second copy of the first id", True),
                ("garbage", _wrong(5)),
                ("garbage", b'{"id": "g", "text": "cut'),
                ("garbage", b"\xff\xfe not UTF-8\nand a second line"),
                ("valid", "third", False),
            ],
            "gzip": False,
            "bom": True,
            "crlf": True,
        },
        {
            "records": [("valid", "in a gzip file", True), ("garbage", b"x" * (MAX_DOC_BYTES + 10))],
            "gzip": True,
            "bom": True,
            "crlf": False,
        },
    ],
    damaged=True,
)
def test_any_mixture_of_records_and_garbage_is_accounted_for(capfd, files, damaged):
    capfd.readouterr()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths, valid, first_of = [], [], {}  # valid: (id, text, the id's first copy or None)
        for n, spec in enumerate(files):
            lines = []
            for record in spec["records"]:
                if record[0] == "garbage":
                    lines.append(record[1])
                    continue
                _, text, repeat = record
                doc_id = valid[-1][0] if repeat and valid else f"v{len(valid)}"
                valid.append((doc_id, text, first_of.get(doc_id)))
                first_of.setdefault(doc_id, (n, 1 + sum(line.count(b"\n") + 1 for line in lines)))  # its line
                lines.append(json.dumps({"id": doc_id, "text": text}).encode())
            data = (b"\xef\xbb\xbf" if spec["bom"] else b"") + b"".join(
                line + (b"\r\n" if spec["crlf"] else b"\n") for line in lines
            )
            path = root / (f"f{n}.jsonl.gz" if spec["gzip"] else f"f{n}.jsonl")
            path.write_bytes(gzip.compress(data) if spec["gzip"] else data)
            paths.append(path)
        if damaged:  # a truncated .gz last: what it held before the damage is read, the rest is one record
            records = (json.dumps({"id": f"d{i}", "text": "t " * 50}).encode() + b"\n" for i in range(200))
            data = gzip.compress(b"".join(records))
            paths.append(root / "cut.jsonl.gz")
            paths[-1].write_bytes(data[: len(data) // 2])
        job = root / "job.yaml"
        inputs = [{"path": str(p)} for p in paths]
        job.write_text(json.dumps({"name": "p", "inputs": inputs, "shard_docs": 7, "max_doc_bytes": MAX_DOC_BYTES}))

        code = cli.main(["run", str(job), "--out", str(root / "out")])
        terminal = "".join(capfd.readouterr())
        assert code == 0 and "Traceback" not in terminal, terminal

        out = root / "out"
        m = json.loads((out / "manifest.json").read_text())
        assert m["input"] == m["kept"] + sum(m["rejected"].values()) + m["quarantined"]
        for c in m["sources"].values():
            assert c["input"] == c["kept"] + sum(c["rejected"].values()) + c["quarantined"]
        assert [u["file"] for u in m["unreadable"]] == ([str(paths[-1])] if damaged else [])

        def read(sub):
            parts = [pl.read_parquet(f) for f in sorted((out / sub).glob("*.parquet"))]
            return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame({"id": [], "text": []})

        kept, rejected = read("kept"), read("rejected")
        assert m["quarantined"] == read("quarantine").height
        kept_text = dict(zip(kept["id"], kept["text"]))
        for doc_id, text, first in valid:
            if first is None:
                assert kept_text[doc_id] == text, doc_id
            else:  # a later copy of an id: rejected, naming where the first one was
                row = rejected.filter((pl.col("id") == doc_id) & (pl.col("text") == text)).row(0, named=True)
                assert row["reject_stage"] == "ids"
                where = f"{paths[first[0]]} row {first[1]}"
                assert row["reject_reason"] == f"duplicate id '{doc_id}': first seen in {where}"
