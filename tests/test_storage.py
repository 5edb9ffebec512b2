"""Object storage for runs (issue 17): `curate run` reading its inputs from and writing its outputs
to a real S3-compatible server (moto's, on 127.0.0.1; tests/s3_support.py), with real `curate run`
processes on a real local Ray: the same outputs as a local run, resume after a killed driver,
the lock object, and the store's errors as one `curate: error:` line."""

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from curate import storage
from curate.cli import main
from curate.lock import LOCK_NAME, LockedError, output_lock

from . import s3_support
from .conftest import DATA, REPO
from .s3_support import aws_env, free_port, moto_server

# `curate` with the slow stage of the fault tests registered (tests/fault_stages.py)
CURATE = (
    "import sys; from curate import registry; "
    "registry.register('sleepy', 'tests.fault_stages:SleepyConfig', 'tests.fault_stages:Sleepy'); "
    "from curate.cli import main; sys.exit(main(sys.argv[1:]))"
)
PARTS = ("kept", "rejected", "quarantine")


@pytest.fixture(scope="module")
def s3():
    with s3_support.serving() as server:
        yield server


def _curate(*args: str, cache: Path) -> subprocess.Popen:
    """A `curate` process; it inherits this process's AWS variables (the s3 fixture's)."""
    return subprocess.Popen(
        [sys.executable, "-c", CURATE, *args],
        cwd=REPO,
        env={**os.environ, "CURATE_CACHE": str(cache)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log
    return log


def _head_gz(source: Path, n: int, target: Path) -> Path:
    with gzip.open(source, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(n)]
    target.write_bytes(gzip.compress("".join(lines).encode(), mtime=0))
    return target


def _frame(s3, url: str, sub: str) -> pl.DataFrame:
    """A run's output part read back from the bucket, without the input file's location."""
    keys = [k for k in s3.keys(url) if k.startswith(f"{sub}/")]
    frames = [pl.from_arrow(storage.read_parquet(f"{url}/{k}")) for k in keys]
    return _comparable(pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame())


def _local_frame(out: Path, sub: str) -> pl.DataFrame:
    files = sorted((out / sub).glob("*.parquet"))
    return _comparable(pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else None)


def _comparable(frame: pl.DataFrame | None) -> pl.DataFrame:
    if frame is None or not len(frame):
        return pl.DataFrame()
    return frame.drop("input_file").sort("id")


def test_paths_and_objects_on_a_real_s3_server(s3, tmp_path):
    bucket = s3.bucket("paths")
    assert storage.is_url(bucket) and not storage.is_url(tmp_path) and not storage.is_url("file:///tmp/x")
    assert storage.join(bucket + "/", "a", "b.txt") == "s3://paths/a/b.txt" and storage.name("s3://paths/a/b") == "b"
    assert storage.join(tmp_path, "a") == tmp_path / "a" and storage.as_location("file:///tmp/x") == Path("/tmp/x")

    # a whole object in one PUT; the digest returned is that of the bytes stored
    digest = storage.write_text(f"{bucket}/out/a.txt", "one\n")
    assert digest == hashlib.sha256(s3.get(f"{bucket}/out/a.txt")).hexdigest() == storage.sha256(f"{bucket}/out/a.txt")
    storage.write_bytes(f"{bucket}/out/sub/b.jsonl.gz", gzip.compress(b'{"text": "x"}\n'))
    assert storage.open_input(f"{bucket}/out/sub/b.jsonl.gz").read() == b'{"text": "x"}\n'  # gunzipped
    assert storage.is_dir(f"{bucket}/out") and storage.is_file(f"{bucket}/out/a.txt")
    assert not storage.exists(f"{bucket}/out/missing")
    assert storage.children(f"{bucket}/out") == [f"{bucket}/out/a.txt", f"{bucket}/out/sub"]
    assert storage.glob(f"{bucket}/out/**/*.gz") == [f"{bucket}/out/sub/b.jsonl.gz"]
    assert storage.glob("*.txt", f"{bucket}/out") == [f"{bucket}/out/a.txt"]

    # Parquet with key-value metadata (a shard's stamp), read from the footer alone
    table = pa.table({"a": [1, 2]}).replace_schema_metadata({b"k": b"v"})
    storage.write_parquet(table, f"{bucket}/p/x.parquet")
    assert storage.parquet_schema(f"{bucket}/p/x.parquet").metadata[b"k"] == b"v"
    assert storage.read_parquet(f"{bucket}/p/x.parquet").num_rows == 2
    storage.move(f"{bucket}/p/x.parquet", f"{bucket}/p/y.parquet")
    assert s3.keys(f"{bucket}/p") == ["y.parquet"]

    storage.remove_tree(f"{bucket}/out")
    storage.remove(f"{bucket}/p/y.parquet")
    storage.remove(f"{bucket}/p/never-there")
    assert s3.keys(bucket) == []


def test_the_lock_object_on_s3(s3):
    out = s3.bucket("locks") + "/run"
    lock = f"{out}/{LOCK_NAME}"
    with output_lock(out):
        holder = json.loads(s3.get(lock))
        assert holder["pid"] == os.getpid()
        with pytest.raises(LockedError, match=f"^{out} is being written by process {os.getpid()} on "):
            with output_lock(out):
                pass
    assert s3.keys(out) == []  # released: the object is gone

    # a holder of this host whose process is gone is taken over; one of another host is not judged
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage.write_text(lock, json.dumps({"pid": int(dead.stdout), "host": holder["host"], "started": time.time()}))
    lines: list[str] = []
    with output_lock(out, lines.append):
        assert json.loads(s3.get(lock))["pid"] == os.getpid()
    assert lines == [lines[0]] and lines[0].startswith(f"taking over the lock of process {int(dead.stdout)} on ")
    storage.write_text(lock, json.dumps({"pid": 1, "host": "elsewhere", "started": time.time()}))
    with pytest.raises(LockedError, match=f"process 1 on elsewhere .*if that run is dead, delete {lock}"):
        with output_lock(out):
            pass
    storage.remove(lock)

    # the conditional PUT: of many creators at once, exactly one gets the object
    results: list[str | None] = []
    barrier = threading.Barrier(8)

    def create(i: int) -> None:
        barrier.wait()
        results.append(storage.create_exclusive(lock, f"{i}".encode()))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and sum(r is not None for r in results) == 1


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory) -> Path:
    """A small version of the demo's inputs: the heads of its shipped files, and the broken fixture."""
    root = tmp_path_factory.mktemp("demo-inputs")
    _head_gz(DATA / "web" / "openwebtext_1k.jsonl.gz", 120, root / "openwebtext_1k.jsonl.gz")
    _head_gz(DATA / "web" / "dolma_cc_2019.jsonl.gz", 60, root / "dolma_cc_2019.jsonl.gz")
    _head_gz(DATA / "harmful" / "jigsaw_toxic_sample.jsonl.gz", 40, root / "jigsaw_toxic_sample.jsonl.gz")
    (root / "broken.jsonl").write_bytes((DATA / "samples" / "broken.jsonl").read_bytes())
    return root


def _demo_job(path: Path, inputs: list[str], models: dict[str, str]) -> Path:
    """jobs/demo.yaml's stages on the test's small models."""
    job = {
        "name": "demo-s3",
        "inputs": [{"path": p} for p in inputs],
        "shard_docs": 60,
        "max_doc_bytes": 200_000,
        "workers": 1,
        "stages": [
            {"langid": {"min_score": 0.5}},
            {"harmful": {"models": {"en": models["harmful"]}}},
            {"perplexity": {"models": {"en": models["wiki"]}, "percentiles": [30, 60], "keep": ["head", "middle"]}},
        ],
    }
    path.write_text(json.dumps(job))
    return path


def test_the_demo_job_from_and_to_s3_equals_a_local_run(s3, models, demo_inputs, tmp_path):
    bucket = s3.bucket("demo")
    names = sorted(p.name for p in demo_inputs.iterdir())
    for name in names:
        s3.upload(demo_inputs / name, f"{bucket}/inputs/{name}")
    local_job = _demo_job(tmp_path / "local.yaml", [str(demo_inputs / n) for n in names], models)
    s3_job = _demo_job(tmp_path / "s3.yaml", [f"{bucket}/inputs/{n}" for n in names], models)
    local_out, url = tmp_path / "out", f"{bucket}/runs/demo"

    _finish(_curate("run", str(local_job), "--out", str(local_out), cache=tmp_path))
    log = _finish(_curate("run", str(s3_job), "--out", url, cache=tmp_path))
    assert f"report: {url}/report.html" in log
    assert "Ray's records of this run: " + str(tmp_path / "runs" / "s3" / "demo" / "runs" / "demo" / "logs") in log

    local = json.loads((local_out / "manifest.json").read_text())
    remote = json.loads(s3.get(f"{url}/manifest.json"))
    counts = ("input", "kept", "synthetic", "rejected", "quarantined", "sources", "stages")
    assert {k: remote[k] for k in counts} == {k: local[k] for k in counts}
    assert remote["input"] == 120 + 60 + 40 + 8 and remote["quarantined"] == 7
    assert remote["input"] == remote["kept"] + sum(remote["rejected"].values()) + remote["quarantined"]
    assert {i["path"]: i["sha256"] for i in remote["inputs"]} == {
        f"{bucket}/inputs/{n}": storage.sha256(demo_inputs / n) for n in names
    }
    for sub in PARTS:  # the same documents with the same scores, decisions and reasons
        assert _frame(s3, url, sub).equals(_local_frame(local_out, sub)), sub
    # the same output files (their bytes differ: `input_file` names the URL); the manifest's checksums
    # are those of the objects in the bucket, and it lists them all
    assert {k: v["rows"] for k, v in remote["shards"].items()} == {k: v["rows"] for k, v in local["shards"].items()}
    for rel, info in remote["shards"].items():
        assert hashlib.sha256(s3.get(f"{url}/{rel}")).hexdigest() == info["sha256"]
    outputs = {k for k in s3.keys(url) if k.startswith(PARTS)}
    assert outputs == set(remote["shards"]) and LOCK_NAME not in s3.keys(url)


def test_resume_on_s3_after_the_driver_is_killed(s3, tmp_path):
    bucket = s3.bucket("resume")
    source = _head_gz(DATA / "web" / "openwebtext_1k.jsonl.gz", 400, tmp_path / "owt.jsonl.gz")
    s3.upload(source, f"{bucket}/in/owt.jsonl.gz")
    job = tmp_path / "job.yaml"
    spec = {"name": "slow", "inputs": [{"path": f"{bucket}/in"}], "shard_docs": 50, "workers": 1}
    job.write_text(json.dumps({**spec, "stages": [{"sleepy": {"seconds_per_doc": 0.03}}]}))  # 8 shards of 1.5 s
    url = f"{bucket}/out"

    first = _curate("run", str(job), "--out", url, cache=tmp_path)
    try:
        deadline = time.time() + 300
        while not (done := [k for k in s3.keys(url) if k.startswith("work/shard-")]):
            assert first.poll() is None, first.stdout.read()
            assert time.time() < deadline, "no shard finished in time"
            assert "manifest.json" not in s3.keys(url)  # a reader never sees a manifest mid-run
            time.sleep(0.2)
        assert json.loads(s3.get(f"{url}/{LOCK_NAME}"))["pid"] == first.pid
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    keys = s3.keys(url)
    done = [k for k in keys if k.startswith("work/shard-")]
    assert 0 < len(done) < 8, "the run finished before it could be killed"
    assert "manifest.json" not in keys and LOCK_NAME in keys  # the killed run's lock stays behind
    etags = {k: s3.client().head_object(Bucket="resume", Key=f"out/{k}")["ETag"] for k in done}

    log = _finish(_curate("run", str(job), "--out", url, cache=tmp_path))
    assert f"taking over the lock of process {first.pid} on " in log
    assert f"8 shards from 1 files; {len(done)} already done, {8 - len(done)} to process" in log
    # the finished shards were reused as they were, read from the bucket by their stamps
    assert {k: s3.client().head_object(Bucket="resume", Key=f"out/{k}")["ETag"] for k in done} == etags
    manifest = json.loads(s3.get(f"{url}/manifest.json"))
    assert manifest["input"] == manifest["kept"] == 400
    kept = _frame(s3, url, "kept")
    assert kept.height == 400 and kept["id"].n_unique() == 400  # nothing lost, nothing doubled
    for rel, info in manifest["shards"].items():
        assert hashlib.sha256(s3.get(f"{url}/{rel}")).hexdigest() == info["sha256"]


def _one_error(capsys, argv: list[str]) -> str:
    """Run the CLI in this process; it must fail with one `curate: error:` line and no traceback."""
    assert main(argv) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("curate: error: ") and "Traceback" not in err, err
    return lines[0]


def test_the_store_s_errors_are_one_line_naming_the_url(s3, tmp_path, capsys):
    bucket = s3.bucket("errors")
    s3.upload(DATA / "samples" / "broken.jsonl", f"{bucket}/in/broken.jsonl")
    good = tmp_path / "good.yaml"
    good.write_text(json.dumps({"name": "e", "inputs": [{"path": f"{bucket}/in/broken.jsonl"}]}))
    missing = tmp_path / "missing.yaml"
    missing.write_text(json.dumps({"name": "e", "inputs": [{"path": f"{bucket}/in/nothing.jsonl"}]}))

    line = _one_error(capsys, ["run", str(missing), "--out", str(tmp_path / "out")])
    assert line == f"curate: error: input {bucket}/in/nothing.jsonl: no such file, folder or matching glob"
    line = _one_error(capsys, ["run", str(good), "--out", "s3://no-such-bucket/out"])
    assert line == "curate: error: s3://no-such-bucket/out: the bucket 'no-such-bucket' does not exist"
    # a prefix that holds other objects is not deleted by --fresh; a prefix being written is refused
    line = _one_error(capsys, ["run", str(good), "--out", f"{bucket}/in", "--fresh"])
    assert line == f"curate: error: --fresh would delete {bucket}/in, which is not a curate output directory " + (
        "(no work/state.json)"
    )
    with output_lock(f"{bucket}/busy"):
        line = _one_error(capsys, ["run", str(good), "--out", f"{bucket}/busy"])
    assert line.startswith(f"curate: error: {bucket}/busy is being written by process {os.getpid()} on ")
    assert s3.keys(f"{bucket}/in") == ["broken.jsonl"] and s3.keys(f"{bucket}/busy") == []

    unreachable = f"http://127.0.0.1:{free_port()}"
    with aws_env({**s3.env, "AWS_ENDPOINT_URL": unreachable}):
        line = _one_error(capsys, ["run", str(good), "--out", f"{bucket}/out"])
    assert line.startswith(f"curate: error: {bucket}/out: cannot reach the object store's endpoint ({unreachable})")

    with moto_server(check_credentials=True) as strict, aws_env(strict.env):  # the fake keys are refused
        line = _one_error(capsys, ["run", str(good), "--out", str(tmp_path / "out2")])
        assert line.startswith(f"curate: error: {bucket}/in/broken.jsonl: access denied")
        line = _one_error(capsys, ["run", str(missing), "--out", f"{bucket}/out"])
        assert line.startswith(f"curate: error: {bucket}/out: access denied")
