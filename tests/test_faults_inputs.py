"""Hostile inputs and faults below the runner (issue 16): a BOM, deep nesting, damaged gzip and
Parquet files, a full disk while writing, and the output directory's lock. Real files, no Ray."""

import errno
import gzip
import json
import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.atomic import NoSpaceError, atomic_path, mount_point, no_space_message
from curate.documents import ShardSpec, count_records, is_unreadable, plan_shards, read_shard
from curate.lock import LOCK_NAME, LockedError, output_lock

from .conftest import REPO

GOOD = [json.dumps({"id": f"d{i}", "text": f"document {i}"}) for i in range(40)]


def _read(path, max_doc_bytes=1000):
    return read_shard(ShardSpec(0, str(path), 0, count_records(path), None), max_doc_bytes).to_pylist()


def test_a_byte_order_mark_at_the_start_of_a_file_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(GOOD[:3]).encode() + b"\n")
    rows = _read(path)
    assert [(r["id"], r["error"]) for r in rows] == [("d0", None), ("d1", None), ("d2", None)]
    # a BOM inside a file is not one: that line is malformed like any other
    path.write_bytes(GOOD[0].encode() + b"\n\xef\xbb\xbf" + GOOD[1].encode() + b"\n")
    assert [r["error"] is None for r in _read(path)] == [True, False]


def test_deep_nesting_is_quarantined_not_a_recursion_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    deep_object = b'{"id": "x", "text": "t", "m": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    path.write_bytes(b"\n".join([GOOD[0].encode(), b"[" * 10_000, deep_object, b"1" * 5000, GOOD[1].encode()]) + b"\n")
    rows = _read(path)
    assert [r["id"] for r in rows if r["error"] is None] == ["d0", "d1"]
    errors = [r["error"] for r in rows if r["error"]]
    assert errors[0].startswith("deep.jsonl row 2: invalid JSON: nesting deeper than")
    assert errors[1].startswith("deep.jsonl row 3: invalid JSON: nesting deeper than")
    assert errors[2].startswith("deep.jsonl row 4: invalid JSON: ") and "digits" in errors[2]


def _truncated_gz(path, n=400):
    lines = "".join(json.dumps({"id": f"z{i}", "text": "word " * 60}) + "\n" for i in range(n))
    data = gzip.compress(lines.encode())
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_gzip_keeps_the_records_before_the_damage_and_quarantines_the_rest_once(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    _truncated_gz(path)
    n = count_records(path)
    rows = _read(path)
    assert len(rows) == n  # the plan and the read agree, so the run's accounting holds
    valid, bad = rows[:-1], rows[-1]
    assert valid and all(r["error"] is None for r in valid)
    assert [r["id"] for r in valid] == [f"z{i}" for i in range(len(valid))]
    assert is_unreadable(bad["error"]) and bad["error"].startswith(f"cut.jsonl.gz row {len(valid) + 1}: ")
    assert "EOFError: Compressed file ended" in bad["error"] and "bytes of decompressed data" in bad["error"]
    # shards cut from the damaged file read the same records: the damage is the last shard's last row
    shards = plan_shards([(path, None)], shard_docs=7)
    assert [r["id"] for s in shards for r in read_shard(s, 1000).to_pylist()] == [r["id"] for r in rows]


def test_a_fake_gzip_and_a_broken_parquet_are_one_quarantined_record_each(tmp_path):
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(GOOD[0].encode() + b"\n")
    broken = tmp_path / "broken.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"]}), broken)
    broken.write_bytes(broken.read_bytes()[:-20])
    for path, error in [(fake, "BadGzipFile"), (broken, "Parquet")]:
        assert count_records(path) == 1
        [row] = _read(path)
        assert is_unreadable(row["error"]) and error in row["error"] and row["error"].startswith(f"{path.name} row ")


def test_a_full_disk_names_the_file_and_the_filesystem_and_leaves_no_temporary(tmp_path, monkeypatch):
    """Injected ENOSPC, as the writer sees it from pyarrow (errno set, no file name)."""
    target = tmp_path / "kept" / "part-00001.parquet"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    with pytest.raises(NoSpaceError) as caught:
        with atomic_path(target) as tmp:
            pq.write_table(pa.table({"a": [1]}), tmp)
    assert str(caught.value) == f"no space left on {mount_point(tmp_path)} while writing {target}"
    assert not target.exists() and list(target.parent.iterdir()) == []
    assert no_space_message(OSError(errno.ENOSPC, "No space left on device", str(target))) == str(caught.value)


def test_a_full_disk_from_the_kernel(tmp_path):
    """/dev/full fails every write with the kernel's own ENOSPC (a full tmpfs: tests/test_faults_run.py)."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with pytest.raises(NoSpaceError, match=f"no space left on .* while writing {tmp_path / 'state.json'}$"):
        with atomic_path(tmp_path / "state.json"), open("/dev/full", "wb") as f:
            f.write(b"x" * 100_000)
    assert list(tmp_path.iterdir()) == []


HOLD = """
import sys, time
from pathlib import Path
from curate.lock import output_lock
with output_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_the_output_lock_names_its_live_holder_and_is_taken_over_when_stale(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "60"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        day = time.strftime("%Y-%m-%d", time.gmtime())
        message = rf"{out} is being written by process {holder.pid} on .* \(started {day} "
        with pytest.raises(LockedError, match=message):
            with output_lock(out):
                pass
        holder.kill()  # a killed holder: the kernel drops its flock, its record stays behind
        holder.wait()
        lines = []
        with output_lock(out, lines.append):
            assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert len(lines) == 1 and lines[0].startswith(f"taking over the lock of process {holder.pid} on ")
        assert lines[0].endswith("which ended without releasing it")
        with output_lock(out, lines.append):  # released cleanly: nothing to take over
            pass
        assert len(lines) == 1
    finally:
        holder.kill()


def test_the_ray_watchdog_refuses_a_process_that_is_not_its_drivers_raylet():
    """It kills only Ray processes under the raylet its own parent started: given anything else
    (here init, and this test's own process) it exits at once without touching a process."""
    for pid in (1, os.getpid()):
        done = subprocess.run(
            [sys.executable, "-m", "curate.ray_watchdog", str(pid)],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and "is not a raylet of this process's parent" in done.stdout
