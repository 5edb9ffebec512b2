"""What a user sees: curate's own lines on the terminal (progress, stage summaries, where the
report is), Ray's records in OUT/logs/ray.log unless --verbose, and failures on the terminal.
Real `curate` processes on a real local Ray, output captured as a non-terminal."""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from curate.llm.server import LocalServer
from curate.ray_runtime import RayStartError, describe_failure, format_worker_lines, is_ray_failure

from .conftest import REPO, write_job

# Ray's Python records ("2026-11-30 10:31:41,120\tWARNING ..."), its C++ lines ("[2026-11-30
# 10:32:10,089 E 7819 7819] core_worker.cc:..."), forwarded worker output ("(pid=12) ...") and
# Ray's error messages ("(raylet) Task ... failed"), possibly coloured
RAY_RECORD = re.compile(
    r"^\[?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}|^(\x1b\[\d+m)?\(([^)]*pid=\d+|raylet|autoscaler)", re.MULTILINE
)


def _curate(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "curate.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def quiet(tmp_path_factory, inputs, models):
    """A run with a perplexity stage and an index step, as the demo has."""
    root = tmp_path_factory.mktemp("quiet")
    stages = [{"perplexity": {"model": models["wiki"], "keep": ["head", "middle"]}}]
    job = write_job(root / "job.yaml", inputs, models, stages=stages, index={"vocab": 1000})
    return root / "out", _curate("run", str(job), "--out", str(root / "out"))


def test_a_run_shows_progress_summaries_and_the_report_but_no_ray_records(quiet):
    out, proc = quiet
    assert proc.returncode == 0, proc.stdout + proc.stderr
    terminal = proc.stdout + proc.stderr
    assert not RAY_RECORD.search(terminal), terminal
    assert "core_worker.cc" not in terminal and "Token authentication" not in terminal
    lines = terminal.splitlines()
    progress = [line for line in lines if line.startswith("scoring: ")]
    final = r"scoring: (\d+)/\1 shards, 248/248 documents, [\d,]+ docs/s, done in \d+:\d\d$"
    assert progress and re.match(final, progress[-1]), progress
    assert any(line.startswith("stage perplexity: ") for line in lines)
    assert lines[-1] == f"report: {out / 'report.html'}"
    assert len(lines) <= 25, terminal
    records = (out / "logs" / "ray.log").read_text()
    # the run's and the index build's Ray records are in the file instead
    assert "Started a local Ray instance" in records and "Starting execution of Dataset" in records
    assert RAY_RECORD.search(records)


def test_index_build_keeps_ray_records_beside_the_index(quiet, tmp_path):
    out, _ = quiet
    tokenizer = out / "index" / "tokenizer.json"
    args = ["--input", str(out / "kept"), "--tokenizer", str(tokenizer), "--out", str(tmp_path / "ix")]
    proc = _curate("index", "build", *args)
    assert proc.returncode == 0, proc.stderr
    assert not RAY_RECORD.search(proc.stdout + proc.stderr), proc.stderr
    assert "shard 0:" in proc.stderr  # the build's own lines stay
    assert "Started a local Ray instance" in (tmp_path / "logs" / "ray.log").read_text()


def test_verbose_brings_ray_records_back(inputs, models, tmp_path):
    stages = [{"perplexity": {"model": models["wiki"]}}]
    job = write_job(tmp_path / "job.yaml", inputs, models, stages=stages, shard_docs=200)
    proc = _curate("run", str(job), "--out", str(tmp_path / "out"), "--verbose")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    terminal = proc.stdout + proc.stderr
    assert "Started a local Ray instance" in terminal and "Execution plan of Dataset" in terminal
    assert RAY_RECORD.search(terminal)
    assert re.search(r"^scoring: (\d+)/\1 shards, 248/248 documents", terminal, re.MULTILINE)  # as plain lines
    assert "Started a local Ray instance" in (tmp_path / "out" / "logs" / "ray.log").read_text()


def test_a_failing_stage_reaches_the_terminal(inputs, models, tmp_path):
    broken = tmp_path / "wiki"
    shutil.copytree(models["wiki"], broken)
    for binary in broken.glob("*.bin*"):
        binary.write_bytes(b"not a KenLM model")
    stages = [{"perplexity": {"model": str(broken)}}]
    job = write_job(tmp_path / "job.yaml", inputs, models, stages=stages, shard_docs=200)
    proc = _curate("run", str(job), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("curate: error: a Ray task failed: OSError: Cannot read model ")
    assert "Traceback" not in proc.stdout + proc.stderr
    assert str(tmp_path / "out" / "logs" / "ray.log") in error
    assert not RAY_RECORD.search(proc.stdout + proc.stderr)


def test_failure_line_unwraps_ray_errors():
    class Wrapper(Exception):
        def __init__(self, cause: BaseException):
            super().__init__("Traceback ...\n  many lines\nValueError: boom")
            self.cause = cause

    assert describe_failure(Wrapper(ValueError("boom"))).startswith("a Ray task failed: ValueError: boom")
    assert describe_failure(RuntimeError("first\nlast line")).startswith("a Ray task failed: RuntimeError: last line")
    # Ray Data re-raises an actor's death `from SystemException()`: the remote traceback names the error
    died = Wrapper(Exception())
    died.args = ("The actor died because of an error in its creation task\nTraceback:\nOSError: Cannot read model",)
    assert describe_failure(died).startswith("a Ray task failed: OSError: Cannot read model")
    start = RayStartError("Ray did not start locally: timed out")
    assert describe_failure(start).startswith("Ray did not start locally: timed out")
    assert is_ray_failure(start) and not is_ray_failure(ValueError("a curate error"))


def test_worker_lines_carry_ray_prefixes():
    batch = {"pid": 12, "actor_name": "MapWorker(StageActor)", "lines": ["loaded", "scored"]}
    prefix = "(MapWorker(StageActor) pid=12)"
    assert format_worker_lines(batch) == [f"{prefix} loaded", f"{prefix} scored"]
    assert format_worker_lines({"pid": 3, "lines": ["x"]}) == ["(pid=3) x"]
    assert format_worker_lines({"pid": "raylet", "lines": ["a worker died"]}) == ["(raylet) a worker died"]


def test_ray_log_file_is_in_the_run_directory():
    from curate.ray_runtime import ray_log_file

    assert ray_log_file("/runs/a") == Path("/runs/a/logs/ray.log")


class _StandIn(LocalServer):
    """A real process in place of llama.cpp's server that answers /v1/models as it does."""

    def command(self) -> list[str]:
        code = f"""
import http.server, json
class Models(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"data": [{{"id": "stand-in"}}]}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.HTTPServer(("127.0.0.1", {self.port}), Models).serve_forever()
"""
        return [sys.executable, "-c", code]


def test_a_server_that_dies_under_the_job_is_reported(tmp_path, capsys):
    log = tmp_path / "llama-server.log"
    with _StandIn("stand-in.gguf", log_file=str(log)):
        pass  # stopped by curate: nothing to report
    assert capsys.readouterr().err == ""
    with _StandIn("stand-in.gguf", log_file=str(log)) as server:
        os.kill(server.process.pid, signal.SIGILL)  # as a llama.cpp build for another CPU dies
        server.process.wait()
    assert f"died during the job (signal SIGILL); its output: {log}" in capsys.readouterr().err
