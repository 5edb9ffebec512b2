"""Two runs on one output directory, a killed driver and Ctrl-C (issue 16): real `curate run`
processes on a real local Ray, with a slow stage (tests/fault_stages.py) so that they can be
caught in the middle."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .conftest import REPO

# `curate` with the slow stage registered, as a user registers a stage of their own
CURATE = (
    "import sys; from curate import registry; "
    "registry.register('sleepy', 'tests.fault_stages:SleepyConfig', 'tests.fault_stages:Sleepy'); "
    "from curate.cli import main; sys.exit(main(sys.argv[1:]))"
)
AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def _curate(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CURATE, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a command started from a shell
    )


@pytest.fixture
def job(tmp_path) -> Path:
    """20 shards of 50 documents, 2.5 seconds each in the slow stage."""
    path = tmp_path / "job.yaml"
    spec = {
        "name": "slow",
        "inputs": [{"path": str(REPO / "data" / "web" / "openwebtext_1k.jsonl.gz")}],
        "shard_docs": 50,
        "workers": 1,
        "stages": [{"sleepy": {"seconds_per_doc": 0.05}}],
    }
    path.write_text(json.dumps(spec))
    return path


def _wait_for_shard(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.time() + 300
    while not list((out / "work").glob("shard-*.parquet")):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no shard finished in time"
        time.sleep(0.1)


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _agents_once_watched(proc: subprocess.Popen, out: Path) -> list[psutil.Process]:
    """The driver's Ray agents, once a shard is done, both agents run and the watchdog watches."""
    driver, deadline = psutil.Process(proc.pid), time.time() + 300
    while True:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no shard finished, or Ray's agents or the watchdog never showed"
        tree = driver.children(recursive=True)
        agents = [p for p in tree if any(a in _command(p) for a in AGENTS)]
        watched = any("curate.ray_watchdog" in _command(p) for p in tree)
        if watched and len(agents) == len(AGENTS) and list((out / "work").glob("shard-*.parquet")):
            time.sleep(2)  # the watchdog's first look at the raylet's children
            return agents
        time.sleep(0.2)


def test_a_second_run_is_refused_and_a_killed_run_leaves_no_agents_and_its_lock_is_taken_over(job, tmp_path):
    out = tmp_path / "out"
    first = _curate("run", str(job), "--out", str(out))
    leftovers: list[psutil.Process] = []
    try:
        leftovers = _agents_once_watched(first, out)
        second = _curate("run", str(job), "--out", str(out))
        log, _ = second.communicate(timeout=120)
        assert second.returncode == 2, log
        [line] = [line for line in log.splitlines() if line.startswith("curate:")]
        assert line.startswith(f"curate: error: {out} is being written by process {first.pid} on ")
        assert "(started 20" in line and "Traceback" not in log

        os.kill(first.pid, signal.SIGKILL)  # the driver alone, as `kill -9 PID` does
        first.wait()
        deadline = time.time() + 60
        while running := [_command(p) for p in leftovers if _alive(p)]:
            assert time.time() < deadline, f"orphaned: {running}"
            time.sleep(0.5)
    finally:  # whatever the outcome, nothing of this test keeps running
        if first.poll() is None:
            first.kill()
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                p.kill()
    done = len(list((out / "work").glob("shard-*.parquet")))
    assert 0 < done < 20, "the run finished before it could be killed"

    third = _curate("run", str(job), "--out", str(out))
    log, _ = third.communicate(timeout=600)
    assert third.returncode == 0, log
    assert f"taking over the lock of process {first.pid} on " in log
    assert f"20 shards from 1 files; {done} already done, {20 - done} to process" in log
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"] == manifest["kept"] == 1000


def test_ctrl_c_prints_one_line(job, tmp_path):
    out = tmp_path / "out"
    proc = _curate("run", str(job), "--out", str(out))
    try:
        _wait_for_shard(proc, out)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends its foreground process group
        log, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, log
    assert log.splitlines()[-1] == "curate: interrupted (run the same command again to resume)"
    assert "Traceback" not in log and "KeyboardInterrupt" not in log
    assert list((out / "work").glob("shard-*.parquet"))  # kept for the rerun
    assert not (out / "manifest.json").exists()
