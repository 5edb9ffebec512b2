"""`curate run` on a two-node Ray cluster on this machine (`ray.cluster_utils.Cluster`): the stage
actors are placed on the second node by a custom resource (the job's `stage_resources`), the
outputs equal a one-node run's byte for byte, and killing that node mid-run neither loses nor
doubles a document (Ray retries on a replacement node, or the run fails and a rerun resumes)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import ray
from pydantic import Field

from curate import lm, registry
from curate.ray_runtime import RayStartError, _auth, init_ray
from curate.registry import Strict
from curate.stages import Resources, Stage
from curate.storage import sha256
from pipelines.runner import run_job
from pipelines.spec import load_job

from .conftest import DATA, write_job

BIN = Path(sys.executable).parent
STAGE_NODE = "stages"  # the custom resource only the second node offers
OUTPUTS = ("kept", "rejected", "quarantine")
# read before any test starts Ray in this process: a parent process that started Ray passes on the
# RAY_AUTH_MODE=token that Ray's local start sets (see curate/ray_runtime.py, `_AuthMode`)
INHERITED_AUTH_MODE = os.environ.get("RAY_AUTH_MODE")


class WordsConfig(Strict):
    pause: float = Field(0.0, ge=0, description="seconds per batch, so that a node can be killed mid-run")
    record: str = Field(description="test instrumentation: a file each actor appends its node and cwd to")


class Words(Stage):
    """Counts words (a score column that rejects nothing) and records where its actor runs."""

    name = "words"
    columns = ("words",)
    resources = Resources(concurrency=2)
    config: WordsConfig

    def setup(self) -> None:
        where = {"node": ray.get_runtime_context().get_node_id(), "cwd": os.getcwd(), "pid": os.getpid()}
        with open(self.config.record, "a") as f:
            f.write(json.dumps(where) + "\n")

    def score(self, texts: list[str]) -> dict[str, np.ndarray]:
        time.sleep(self.config.pause)
        return {"words": np.array([len(t.split()) for t in texts], np.int64)}

    def fit(self, scores: pl.DataFrame) -> dict[str, Any]:
        return {}


def test_stage_resources_reach_the_actor_options_and_not_the_config_hash(tmp_path):
    job_resources = {STAGE_NODE: 0.01, "big_memory": 1.0}
    resolved = Resources(cpus=0.25, custom={"big_memory": 2.0}).resolve(0.5, 3, job_resources)
    # the stage's own setting wins over the job's; the job's fills in the rest
    assert resolved.ray_options() == {"num_cpus": 0.25, "resources": {STAGE_NODE: 0.01, "big_memory": 2.0}}
    assert Resources().resolve(0.5, 3).ray_options() == {"num_cpus": 0.5}
    plain = {"name": "j", "inputs": [{"path": "x.jsonl"}]}
    (tmp_path / "a.yaml").write_text(json.dumps(plain))
    (tmp_path / "b.yaml").write_text(json.dumps({**plain, "stage_resources": job_resources}))
    a, b = load_job(tmp_path / "a.yaml"), load_job(tmp_path / "b.yaml")
    assert b.stage_resources == job_resources and a.config_hash() == b.config_hash()


def test_a_local_ray_start_leaves_the_next_start_the_users_authentication_mode():
    from ray._raylet import AuthenticationMode, get_authentication_mode

    ray.shutdown()
    _auth.as_given()  # what earlier local starts in this process left is undone; a parent's setting stays
    given = os.environ.pop("RAY_AUTH_MODE", None)  # this test is a user who set nothing
    try:
        init_ray()  # Ray's local start turns token authentication on for the whole process...
        assert os.environ.get("RAY_AUTH_MODE") == "token" and get_authentication_mode() == AuthenticationMode.TOKEN
        ray.shutdown()
        _auth.as_given()  # ...which the next start undoes: it joins a cluster without tokens as a fresh process
        assert "RAY_AUTH_MODE" not in os.environ and get_authentication_mode() == AuthenticationMode.DISABLED
        os.environ["RAY_AUTH_MODE"] = "token"  # a user's own setting stays
        _auth.as_given()
        assert os.environ["RAY_AUTH_MODE"] == "token" and get_authentication_mode() == AuthenticationMode.TOKEN
    finally:
        os.environ.pop("RAY_AUTH_MODE", None)
        if given is not None:
            os.environ["RAY_AUTH_MODE"] = given
        _auth.as_given()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nodes:
    """Ray nodes started as `ray start --block` processes of their own, as on separate machines,
    with ports of their own (other Rays on this machine hold the defaults), joined at this host's
    address (Ray resolves 127.0.0.1 in `--address` to it). A node is killed with its process group.
    On a loaded 2-core machine a node can miss Ray's fixed 30 s registration window at start-up
    (`ray._private.node`): one that exits while starting is started again."""

    PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")
    PORTS += ("metrics-export-port", "node-manager-port", "object-manager-port")

    def __init__(self, tmp: Path):
        self.gcs = _free_port()
        self.address = f"{ray.util.get_node_ip_address()}:{self.gcs}"
        self.tmp = tmp
        self.temp = Path(f"/tmp/ray-cluster-test-{os.getpid()}")  # short: Ray's socket paths live under it
        # the Python agents start slowly under load: the raylet waits for them this long
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_agent_register_timeout_ms": "300000"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[tuple[tuple[str, ...], subprocess.Popen]] = []
        self.killed: set[int] = set()
        self.logs = 0

    def start(self, *args: str) -> subprocess.Popen:
        ports = [f"--{name}={_free_port()}" for name in self.PORTS]
        command = [str(BIN / "ray"), "start", "--block", "--disable-usage-stats"]
        self.logs += 1
        log = open(self.tmp / f"node-{self.logs}.log", "w")
        proc = subprocess.Popen([*command, *ports, *args], env=self.env, start_new_session=True, stdout=log, stderr=log)
        self.nodes.append((args, proc))
        return proc

    def head(self) -> None:
        client = f"--ray-client-server-port={_free_port()}"
        # a temp dir of its own: Ray's default one names the last `ray start` cluster, which a bare
        # ray.init() elsewhere on this machine would join
        temp = f"--temp-dir={self.temp}"
        self.start("--head", f"--port={self.gcs}", "--num-cpus=1", "--include-dashboard=false", client, temp)

    def stage_node(self) -> subprocess.Popen:
        return self.start(f"--address={self.address}", "--num-cpus=2", f"--resources={json.dumps({STAGE_NODE: 1})}")

    def wait_for_stage_node(self) -> None:
        """Join the cluster (once) and wait until a live node offers the stage resource."""
        deadline = time.monotonic() + 600
        while True:
            for args, proc in list(self.nodes):
                if proc.poll() is not None and proc.pid not in self.killed:
                    self.nodes.remove((args, proc))
                    self.start(*args)
            try:
                init_ray(self.address)
                if ray.available_resources().get(STAGE_NODE):
                    return
            except RayStartError:
                pass
            logs = "".join(f.read_text()[-1500:] for f in sorted(self.tmp.glob("node-*.log")))
            assert time.monotonic() < deadline, f"the Ray nodes did not start: {logs}"
            time.sleep(1)

    def kill(self, proc: subprocess.Popen) -> None:
        self.killed.add(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        ray.shutdown()
        for _, proc in reversed(self.nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in self.nodes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill(proc)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def wiki(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("wiki") / "wiki")
    lm.train([lm.source(str(DATA / "wiki"))], path, vocab=4000)
    return path


@pytest.fixture(scope="module")
def words_stage():
    saved = dict(registry.STAGES)
    registry.register("words", f"{__name__}:WordsConfig", f"{__name__}:Words")
    yield
    registry.STAGES.clear()
    registry.STAGES.update(saved)


@pytest.fixture
def relative_inputs(tmp_path, inputs, monkeypatch) -> Path:
    """The driver runs in a folder of its own, where the job names its inputs by relative paths."""
    (tmp_path / "data").symlink_to(inputs)
    monkeypatch.chdir(tmp_path)
    return Path("data")


def _job(path: Path, inputs: Path, wiki: str, record: Path, pause: float, **extra) -> Any:
    stages = [
        {"words": {"pause": pause, "record": str(record)}},
        {"perplexity": {"model": wiki, "keep": ["head", "middle"]}},
    ]
    models = {"harmful": wiki, "wiki": wiki}  # write_job's default stages, replaced here
    return load_job(write_job(path, inputs, models, stages=stages, shard_docs=20, batch_docs=10, **extra))


def _outputs(out: Path) -> dict[str, pl.DataFrame]:
    frames = {}
    for sub in OUTPUTS:
        files = sorted((out / sub).glob("*.parquet"))
        frames[sub] = pl.concat([pl.read_parquet(f) for f in files]).sort("id") if files else pl.DataFrame()
    return frames


def _checksums(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): sha256(p) for sub in OUTPUTS for p in sorted((out / sub).glob("*.parquet"))}


@pytest.fixture(scope="module")
def one_node(tmp_path_factory, inputs, wiki, words_stage):
    """The reference: the same job on a local one-node Ray started in this process. Ray's local
    start turns token authentication on for the process, which once made the next join of the
    (token-less) test cluster fail: `init_ray` undoes it (curate/ray_runtime.py, `_AuthMode`),
    and running the reference here first keeps that tested."""
    root = tmp_path_factory.mktemp("one_node")
    job = _job(root / "job.yaml", inputs, wiki, root / "record.jsonl", pause=0.0)
    ray.shutdown()
    manifest = run_job(job, out=root / "out", log=lambda *a: None)
    ray.shutdown()
    return root / "out", manifest


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node (1 CPU: the driver's reads) and a node offering the stage resource."""
    ray.shutdown()
    nodes = Nodes(tmp_path_factory.mktemp("nodes"))
    # the driver joins with the nodes' authentication mode even if a parent process left another in
    # the environment; one that this process's own Ray start left is init_ray's to undo
    with pytest.MonkeyPatch.context() as env:
        if INHERITED_AUTH_MODE is not None:
            env.setenv("RAY_AUTH_MODE", nodes.env["RAY_AUTH_MODE"])
        try:
            nodes.head()
            nodes.stage_node()
            nodes.wait_for_stage_node()
            yield nodes
        finally:
            nodes.stop()


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow  # three Ray starts and a KenLM model: the file took 6 min 19 s at load 30-50 on 2 cores
def test_two_nodes_equal_one_node(tmp_path, one_node, cluster, relative_inputs, wiki, words_stage):
    reference, ref_manifest = one_node
    record = tmp_path / "record.jsonl"
    job = _job(tmp_path / "job.yaml", relative_inputs, wiki, record, 0.0, stage_resources={STAGE_NODE: 0.01})
    manifest = run_job(job, out=tmp_path / "out", address=cluster.address, log=lambda *a: None)

    # the stage actors ran on the second node, in a working directory other than the driver's
    stage_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and STAGE_NODE in n["Resources"]}
    placed = _records(record)
    assert len(stage_nodes) == 1 and {p["node"] for p in placed} == stage_nodes
    assert all(p["cwd"] != str(tmp_path) for p in placed)
    # relative paths in the job were resolved by the driver: the records name absolute input files
    kept = _outputs(tmp_path / "out")["kept"]
    assert all(Path(f).is_absolute() for f in kept["input_file"].unique())

    assert _checksums(tmp_path / "out") == _checksums(reference)
    for key in ("input", "kept", "rejected", "quarantined", "sources", "shards"):
        assert manifest[key] == ref_manifest[key], key


@pytest.mark.slow
def test_killing_the_stage_node_mid_run_loses_and_doubles_nothing(
    tmp_path, one_node, cluster, relative_inputs, wiki, words_stage
):
    reference, ref_manifest = one_node
    out = tmp_path / "out"
    job = _job(
        tmp_path / "job.yaml", relative_inputs, wiki, tmp_path / "record.jsonl", 0.3, stage_resources={STAGE_NODE: 0.01}
    )
    total = len(list((reference / "work").glob("shard-*.parquet")))
    seen: dict[str, int] = {}

    def kill_mid_run() -> None:
        deadline = time.monotonic() + 120
        while not list((out / "work").glob("shard-*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["done_at_kill"] = len(list((out / "work").glob("shard-*.parquet")))
        cluster.kill(next(proc for args, proc in reversed(cluster.nodes) if "--head" not in args))
        cluster.stage_node()  # the replacement

    killer = threading.Thread(target=kill_mid_run)
    killer.start()
    try:
        run_job(job, out=out, address=cluster.address, log=lambda *a: None)
        outcome = "retried"
    except Exception as e:  # a clean failure: the rerun resumes from the shards already written
        outcome = f"failed: {e}"
        killer.join()
        run_job(job, out=out, address=cluster.address, log=lambda *a: None)
    killer.join()
    print(f"after the kill: {outcome}; shards written before it: {seen}")
    assert 0 < seen["done_at_kill"] < total

    assert _checksums(out) == _checksums(reference)
    ids = pl.concat([frame["id"] for frame in _outputs(out).values() if len(frame)])
    assert ids.n_unique() == len(ids) == ref_manifest["input"]
