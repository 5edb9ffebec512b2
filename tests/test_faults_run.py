"""`curate run` against hostile inputs and faults (issue 16), on real files and a real local Ray
(started once, in this process): a changed input on resume, damaged and odd files, duplicate ids,
an existing file as --out, and a full disk (a real tmpfs where the test may mount one)."""

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.documents import InputError
from curate.storage import sha256
from pipelines.runner import find_duplicates, run_job
from pipelines.spec import load_job

from .conftest import REPO


def _job(tmp_path: Path, paths: list[Path], **extra) -> Path:
    job = tmp_path / "job.yaml"
    spec = {"name": "faults", "inputs": [{"path": str(p)} for p in paths], "shard_docs": 100, "workers": 1, **extra}
    job.write_text(json.dumps(spec))
    return job


def _run(job: Path, out: Path) -> tuple[dict, list[str]]:
    lines: list[str] = []
    return run_job(load_job(job), out=out, log=lambda line: lines.append(str(line))), lines


def _read(out: Path, sub: str) -> pl.DataFrame:
    files = sorted((out / sub).glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


def _write(path: Path, docs: list[dict]) -> None:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))


def test_a_resume_after_an_input_changed_never_serves_stale_documents(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write(a, [{"id": f"old{i}", "text": f"old text {i}"} for i in range(300)])
    _write(b, [{"id": f"b{i}", "text": f"other file {i}"} for i in range(60)])
    job, out = _job(tmp_path, [a, b]), tmp_path / "out"
    first, _ = _run(job, out)
    assert first["kept"] == 360
    b_shard = out / "work" / "shard-00003.parquet"
    b_mtime = b_shard.stat().st_mtime_ns

    # the steps: rewrite the first 100 records, append 50
    docs = [{"id": f"new{i}", "text": f"new text {i}"} for i in range(100)]
    docs += [{"id": f"old{i}", "text": f"old text {i}"} for i in range(100, 300)]
    _write(a, docs + [{"id": f"more{i}", "text": f"appended {i}"} for i in range(50)])
    manifest, lines = _run(job, out)
    stale = f"3 finished shards are stale (input changed since it was scored: {a}): scoring their documents again"
    assert stale in lines
    assert "5 shards from 2 files; 1 already done, 4 to process" in lines
    kept = _read(out, "kept")
    expected = [d["id"] for d in docs] + [f"more{i}" for i in range(50)] + [f"b{i}" for i in range(60)]
    assert sorted(kept["id"]) == sorted(expected)
    assert kept.filter(pl.col("id") == "new7")["text"].to_list() == ["new text 7"]
    assert manifest["input"] == manifest["kept"] == 410
    assert {i["path"]: i["sha256"] for i in manifest["inputs"]}[str(a)] == sha256(a)
    # b.jsonl did not change: its finished shard moved to its new number instead of being redone
    moved = out / "work" / "shard-00004.parquet"
    assert moved.stat().st_mtime_ns == b_mtime


def test_damaged_and_odd_files_do_not_stop_a_run_and_duplicate_ids_are_rejected(tmp_path):
    first = tmp_path / "first.jsonl"  # a BOM, a line of 10,000 nested arrays, CRLF line ends
    lines = [json.dumps({"id": f"f{i}", "text": f"first file {i}"}) for i in range(20)]
    first.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines[:10] + ["[" * 10_000] + lines[10:]).encode() + b"\r\n")
    cut = tmp_path / "cut.jsonl.gz"
    data = gzip.compress("".join(json.dumps({"id": f"c{i}", "text": "word " * 80}) + "\n" for i in range(300)).encode())
    cut.write_bytes(data[: len(data) // 2])
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(b'{"id": "not gzip", "text": "plain text"}\n')
    again = tmp_path / "again.jsonl"  # f3 is already in first.jsonl
    _write(again, [{"id": "f3", "text": "the same id again"}, {"id": "g1", "text": "fine"}])
    manifest, _ = _run(_job(tmp_path, [first, cut, fake, again]), tmp_path / "out")

    out = tmp_path / "out"
    kept, rejected, quarantine = _read(out, "kept"), _read(out, "rejected"), _read(out, "quarantine")
    assert {f"f{i}" for i in range(20)} | {"g1"} <= set(kept["id"])
    assert kept.filter(pl.col("id") == "f3")["text"].to_list() == ["first file 3"]
    assert rejected.select("id", "reject_stage", "reject_reason").rows() == [
        ("f3", "ids", f"duplicate id 'f3': first seen in {first} row 4")
    ]
    assert manifest["rejected"] == {"ids": 1} and manifest["stages"] == [{"stage": "ids", "duplicate_ids": "reject"}]
    errors = dict(zip(quarantine["input_file"], quarantine["error"]))
    assert re.fullmatch(r"first.jsonl row 11: invalid JSON: nesting deeper than \d+ levels", errors[str(first)])
    read_from_cut = kept.filter(pl.col("input_file") == str(cut)).height
    assert 0 < read_from_cut < 300
    assert errors[str(cut)].startswith(f"cut.jsonl.gz row {read_from_cut + 1}: unreadable from here on (EOFError")
    assert "BadGzipFile" in errors[str(fake)]
    assert [(u["file"], u["row"]) for u in manifest["unreadable"]] == [(str(cut), read_from_cut + 1), (str(fake), 1)]
    assert manifest["input"] == 20 + 1 + read_from_cut + 1 + 1 + 2
    assert manifest["input"] == manifest["kept"] + sum(manifest["rejected"].values()) + manifest["quarantined"]


def test_the_duplicate_ids_option():
    scores = pl.DataFrame(
        {
            "id": ["a", "b", "a", "x", "a"],
            "input_file": ["one", "one", "two", "two", "two"],
            "input_row": [1, 2, 1, 2, 3],
            "error": [None, None, None, "bad", None],
        }
    )
    assert find_duplicates(scores, "reject").rows() == [
        ("two", 1, "duplicate id 'a': first seen in one row 1"),
        ("two", 3, "duplicate id 'a': first seen in one row 1"),
    ]
    assert find_duplicates(scores, "keep").is_empty()
    with pytest.raises(InputError, match="duplicate id 'a': two row 1 repeats one row 1 .*duplicate_ids: error"):
        find_duplicates(scores, "error")


def test_an_existing_file_as_out_is_one_error_line(tmp_path):
    docs = tmp_path / "docs.jsonl"
    _write(docs, [{"id": "a", "text": "x"}])
    proc = subprocess.run(
        [sys.executable, "-m", "curate.cli", "run", str(_job(tmp_path, [docs])), "--out", str(docs)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"curate: error: the output directory {docs} is a file: name a directory with --out\n"


@pytest.fixture
def tmpfs(tmp_path):
    """A small real filesystem that fills up (needs the right to mount: root in a sandbox)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_error_line_leaves_no_output_set_and_a_rerun_resumes(tmp_path, tmpfs):
    job = _job(tmp_path, [REPO / "data" / "web" / "openwebtext_1k.jsonl.gz"], shard_docs=250)
    reference, _ = _run(job, tmp_path / "reference")
    # the run's scored shards fit on the small disk; its outputs do not
    out = tmpfs / "out"
    shutil.copytree(tmp_path / "reference" / "work", out / "work")
    used = sum(f.stat().st_size for f in (out / "work").iterdir())
    subprocess.run(["mount", "-o", f"remount,size={used + 256 * 1024}", str(tmpfs)], check=True)

    def curate_run():
        return subprocess.run(
            [sys.executable, "-m", "curate.cli", "run", str(job), "--out", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    full = curate_run()
    assert full.returncode == 1, full.stdout + full.stderr
    assert "Traceback" not in full.stderr
    [error] = full.stderr.splitlines()
    assert error.startswith(f"curate: error: no space left on {tmpfs} while writing {out}/")
    assert not (out / "manifest.json").exists()  # a directory without a manifest is no finished output set
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]

    subprocess.run(["mount", "-o", "remount,size=64m", str(tmpfs)], check=True)
    resumed = curate_run()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "4 shards from 1 files; 4 already done, 0 to process" in resumed.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shards"] == reference["shards"]
