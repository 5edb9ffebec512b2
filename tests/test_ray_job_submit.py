"""A `ray start --head` cluster: the demo job submitted with `ray job submit`, and `curate run --address`."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate.processes import stop_group

from .conftest import REPO

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster of its own (own ports, own temp dir), torn down with its process group."""
    gcs, dashboard = _free_port(), _free_port()
    # Ports of its own for every service: another Ray on this machine (an earlier test's) holds
    # the defaults, and a head whose dashboard agent cannot bind never takes jobs.
    own_ports = [
        f"--{name}={_free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "metrics-export-port",
            "node-manager-port",
            "object-manager-port",
            "ray-client-server-port",
        )
    ]
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    temp = Path("/tmp") / f"ray-cluster-{os.getpid()}"
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--include-dashboard=true",
            "--num-cpus=2",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            *own_ports,
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 300  # generous: a loaded 2-core machine starts Ray slowly
        # Ready means a job can be submitted: the job agent comes up after the dashboard answers.
        probe = [str(BIN / "ray"), "job", "submit", "--no-wait", "--address", address, "--", "true"]
        while (answer := subprocess.run(probe, env=env, capture_output=True, text=True)).returncode != 0:
            assert head.poll() is None, head.stdout.read()
            assert time.time() < deadline, f"the Ray head did not take jobs: {answer.stderr[-2000:]}"
            time.sleep(1)
        yield address, env, f"127.0.0.1:{gcs}"
    finally:
        stop_group(head, timeout=30)


def test_demo_job_through_ray_job_submit(cluster, tmp_path):
    address, env, _ = cluster
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(REPO),
            "--",
            "curate",
            "run",
            "jobs/demo.yaml",
            "--out",
            str(out),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,  # the demo trains its four KenLM models inside the job
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "succeeded" in log, log
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"] == manifest["kept"] + sum(manifest["rejected"].values()) + manifest["quarantined"] > 1000
    assert (out / "report.html").is_file()


def test_run_with_address_joins_the_cluster(cluster, tmp_path):
    """`curate run --address HOST:PORT` runs on the cluster (its Ray records say it joined one),
    and writes the same output files, byte for byte, as a run on its own local Ray."""
    _, env, gcs = cluster
    job = tmp_path / "job.yaml"
    sample = REPO / "data" / "samples" / "openwebtext_short12.jsonl"
    # two shards, so that the shards' rows come back through Ray in some order and are put in theirs
    spec = {"name": "a", "inputs": [{"path": str(sample)}], "shard_docs": 5, "stages": [{"langid": {}}]}
    job.write_text(json.dumps(spec))
    manifests = {}
    for how, address in (("joined", ["--address", gcs]), ("local", [])):
        out = tmp_path / how
        proc = subprocess.run(
            [str(BIN / "curate"), "run", str(job), "--out", str(out), *address],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        manifests[how] = json.loads((out / "manifest.json").read_text())
    manifest = manifests["joined"]
    assert manifest["input"] == 12 == manifest["kept"] + sum(manifest["rejected"].values()) + manifest["quarantined"]
    assert len(manifest["shards"]) >= 3 and manifest["shards"] == manifests["local"]["shards"]  # sha256 of each file
    log = (tmp_path / "joined" / "logs" / "ray.log").read_text()  # Ray names the node's own address for 127.0.0.1
    assert re.search(rf"Connecting to existing Ray cluster at address: [\d.]+:{gcs.rsplit(':', 1)[1]}\b", log), log
    local = (tmp_path / "local" / "logs" / "ray.log").read_text()
    assert "Connecting to existing Ray cluster" not in local, local
