"""Throughput of the KenLM stages, per core and against the KenLM-only limit, all in one run:

    .venv/bin/python benchmarks/perplexity.py [--copies 20] [--stages perplexity,harmful]

For each stage (`perplexity`: one 16k-piece Wikipedia model; `harmful`: the contrastive score of
a harmful-only tweet model against a benign one, two models per document) it prints docs/s and
MB/s of:
- the plain CCNet loop: one process reads the file and, per document and line, normalises (CCNet's
  step-by-step normaliser), calls SentencePiece and KenLM (cc_net's DocLM, the baseline);
- `curate run` with 1 worker and with one worker per core, each on its own Ray (start-up
  included) and then with `--address` on a long-lived local Ray (`ray start --head`, started once
  by the benchmark after one warm-up run, stopped at the end whatever happens; `--no-address`
  skips these rows);
- KenLM alone on pre-tokenised lines (the limit: what is left with normalisation and SentencePiece
  free), in one process;
per core and as ratios to the plain loop; under each curate row, the run's CPU seconds by process
(the driver, Ray's workers by what they ran: `ReadShard`, `MapWorker`, Ray Data's own actors, and
Ray's daemons; on the long-lived Ray, what its processes used over the run), sampled with psutil
every half second, and the whole machine's CPU seconds over the run (anyone's). It fails when
curate's scores differ from the plain loop's beyond float tolerance (the loop adds every line in
order, curate the empty lines last), or when a document is missing. The langid stage's own speed
on the same corpus is printed last.

The corpus is the shipped web sample (OpenWebText + Common Crawl, 1,670 documents, 7.5 MB)
repeated `--copies` times with fresh ids.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import kenlm
import numpy as np
import polars as pl
import psutil
import sentencepiece as spm

from curate import lm
from curate.langid import LangidConfig, LangidStage
from curate.normalize import DocumentLines, normalize_reference
from curate.processes import stop_group

REPO = Path(__file__).resolve().parent.parent
DAVIDSON = str(REPO / "data" / "harmful" / "davidson_hate_offensive.jsonl.gz")


def make_corpus(path: Path, copies: int) -> tuple[int, int]:
    docs = [
        json.loads(line)
        for f in sorted((REPO / "data" / "web").glob("*.jsonl.gz"))
        for line in gzip.open(f, "rt", encoding="utf-8")
    ]
    n = size = 0
    with open(path, "w", encoding="utf-8") as out:
        for copy in range(copies):
            for doc in docs:
                record = {"id": f"{doc['id']}#{copy}", "text": doc["text"], "source": doc["source"]}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                n += 1
                size += len(doc["text"].encode("utf-8"))
    return n, size


def ccnet_loop(corpus: Path, model_dirs: list[Path]) -> dict[str, np.ndarray]:
    """The baseline: what cc_net's DocLM does per document, in one process, under each model.
    Returns, by id order, every document's sum of log10 probabilities, its tokens and their ratio
    (the per-token log10 probability) under each model."""
    models = [
        (spm.SentencePieceProcessor(model_file=str(d / lm.SP_MODEL)), kenlm.Model(str(d / lm.KENLM_BINARY)))
        for d in model_dirs
    ]
    ids, sums, tokens = [], [], []
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            ids.append(doc["id"])
            log_score, length = np.zeros(len(models)), np.zeros(len(models))
            for text_line in doc["text"].split("\n"):
                normalized = normalize_reference(text_line)  # once for all the models
                for m, (sp, model) in enumerate(models):
                    pieces = sp.encode_as_pieces(normalized)
                    log_score[m] += model.score(" ".join(pieces))
                    length[m] += len(pieces) + 1
            sums.append(log_score)
            tokens.append(length)
    return {"id": np.array(ids), "sums": np.array(sums), "tokens": np.array(tokens), "lp": np.array(sums) / tokens}


def kenlm_only(model_dirs: list[Path], copies: int) -> float:
    """Seconds KenLM alone takes for the corpus: one copy of the sample cut into pieces first
    (untimed), then scored line by line under each model, `copies` times."""
    texts = [
        json.loads(line)["text"]
        for f in sorted((REPO / "data" / "web").glob("*.jsonl.gz"))
        for line in gzip.open(f, "rt", encoding="utf-8")
    ]
    lines = [normalize_reference(line) for text in texts for line in text.split("\n")]
    total = 0.0
    for d in model_dirs:
        sp = spm.SentencePieceProcessor(model_file=str(d / lm.SP_MODEL))
        score = kenlm.Model(str(d / lm.KENLM_BINARY)).score
        pieces = [" ".join(p) for p in sp.encode(lines, out_type=str)]
        t0 = time.perf_counter()
        for _ in range(copies):
            for p in pieces:
                score(p)
        total += time.perf_counter() - t0
    return total


def curate_run(
    tmp: Path,
    corpus: Path,
    stage: dict,
    workers: int | None,
    tag: str,
    ray: LocalRay | None = None,
    env: dict[str, str] | None = None,
) -> tuple[float, pl.DataFrame, Usage]:
    """`curate run` of one stage over the corpus in a fresh process (with `env` added to its
    environment), on its own embedded Ray or, with `ray`, joining that long-lived one
    (`--address`); (seconds, every output row, CPU use)."""
    out = tmp / f"out-{tag}"
    job = tmp / f"job-{tag}.yaml"
    spec = {"name": "bench", "inputs": [{"path": str(corpus)}], "shard_docs": 2000, "batch_docs": 256}
    spec |= {"max_doc_bytes": 10_000_000, "stages": [stage]} | ({"workers": workers} if workers else {})
    job.write_text(json.dumps(spec))
    log = tmp / f"log-{tag}.txt"
    command = [sys.executable, "-m", "curate.cli", "run", str(job), "--out", str(out)]
    command += ["--address", ray.address] if ray else []
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | (ray.env if ray else {}) | (env or {})
    t0 = time.perf_counter()
    with open(log, "w") as output:
        proc = subprocess.Popen(command, stdout=output, stderr=output, env=env)
        usage = process_cpu(proc, ray.head if ray else None)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(log.read_text()[-6000:])
    parts = [pl.read_parquet(p) for part in ("kept", "rejected") for p in sorted((out / part).glob("*.parquet"))]
    rows = pl.concat(parts, how="diagonal")  # rejected rows have reject_stage and reject_reason too
    return seconds, rows, usage


class LocalRay:
    """A one-node Ray started once with `ray start --head` on 127.0.0.1 (own ports and temp dir,
    the dashboard as `ray start` has it by default, for `ray job submit`), the long-lived Ray that
    `curate run --address` joins; stopped with its process group on `close`, whatever happened."""

    def __init__(self, cpus: int, tmp: Path):
        ports = [_free_port() for _ in range(9)]
        names = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port")
        names += ("metrics-export-port", "node-manager-port", "object-manager-port", "ray-client-server-port")
        self.address = f"127.0.0.1:{ports[0]}"
        # token authentication off, as the test cluster has it (tests/test_ray_job_submit.py)
        self.env = {"RAY_AUTH_MODE": "disabled"}
        command = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--num-cpus={cpus}"]
        command += ["--node-ip-address=127.0.0.1", f"--port={ports[0]}", "--dashboard-host=127.0.0.1"]
        command += [f"--dashboard-port={ports[1]}", "--disable-usage-stats", f"--temp-dir={tmp / 'ray'}"]
        command += [f"--{name}={port}" for name, port in zip(names, ports[2:], strict=True)]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | self.env
        self.proc = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.head = psutil.Process(self.proc.pid)
        try:
            said = []
            while "Ray runtime started" not in (line := self.proc.stdout.readline()):
                said.append(line)
                if not line and self.proc.poll() is not None:
                    raise RuntimeError(f"ray start failed: {''.join(said)[-3000:]}")
            threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # keep its pipe drained
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        stop_group(self.proc, timeout=30)

    def __enter__(self) -> LocalRay:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Usage:
    """CPU seconds of a run: by role (`process_cpu`), and the whole machine's over the run's window
    (every process on it: others' load included, so meaningful on a quiet machine only)."""

    roles: dict[str, list[float]]
    machine: float


def process_cpu(proc: subprocess.Popen, cluster: psutil.Process | None = None, interval: float = 0.5) -> Usage:
    """CPU seconds (user + system) of every process of a run until it ends, by role: the driver,
    Ray's worker processes by what they ran (`ReadShard`, `MapWorker`, Ray Data's own actors),
    Ray's daemons. With `cluster` (a long-lived Ray's `ray start` process), its processes are
    outside the run's tree: what they used from the run's start on is counted with the run's.
    Sampled every `interval` s, so a process that ends loses its last interval."""
    root = psutil.Process(proc.pid)
    machine0 = _machine_cpu()
    before = {p.pid: cpu for p, cpu in _tree_cpu(cluster)} if cluster else {}
    seen: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        trees = [*_tree_cpu(root), *(_tree_cpu(cluster) if cluster else [])]
        for p, cpu in trees:
            with contextlib.suppress(psutil.Error):
                role = "driver" if p.pid == proc.pid else _role(p.cmdline())
                cpu -= before.get(p.pid, 0.0)
                # a worker's title changes as it works (ray::IDLE, then a task or an actor): keep the last
                if role != "IDLE" or p.pid not in seen:
                    seen[p.pid] = (role, cpu)
                else:
                    seen[p.pid] = (seen[p.pid][0], cpu)
        time.sleep(interval)
    machine = _machine_cpu() - machine0
    roles: dict[str, list[float]] = {}
    for role, cpu in seen.values():
        roles.setdefault(role, []).append(cpu)
    return Usage(roles, machine)


def _tree_cpu(root: psutil.Process) -> list[tuple[psutil.Process, float]]:
    """(process, its CPU seconds so far) for `root` and every process below it that still runs."""
    found = []
    with contextlib.suppress(psutil.Error):
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                found.append((p, sum(p.cpu_times()[:2])))
    return found


def _machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far, all cores (every state but idle and iowait)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _role(cmdline: list[str]) -> str:
    """A process of a Ray run by its command line: a worker's `ray::Name` title, else the daemon."""
    line = " ".join(cmdline)
    if line.startswith("ray::"):  # e.g. ray::MapWorker(StageActor).__call__, ray::AutoscalingCoordinator:...
        return line.split()[0].removeprefix("ray::").split("(")[0].split(".")[0].split(":")[0]
    for daemon in DAEMONS:
        if daemon in line:
            return DAEMONS[daemon]
    return Path(cmdline[0]).name if cmdline else "?"


# Ray's daemons by a part of their command line (ray/_private/services.py starts them), and curate's watchdog
DAEMONS = {
    "gcs_server": "gcs_server",
    "raylet": "raylet",
    "dashboard/agent.py": "dashboard agent",
    "dashboard.py": "dashboard (API server)",
    "runtime_env/agent": "runtime-env agent",
    "log_monitor": "log_monitor",
    "monitor.py": "autoscaler monitor",
    "ray_watchdog": "ray_watchdog",
    "ray start": "ray start",
}


def print_cpu(usage: Usage, ray: LocalRay | None = None) -> None:
    """One line under a curate row: where its CPU seconds went, by process."""
    roles = usage.roles
    parts = [
        f"{role} {sum(cpus):.1f}" + (f" (x{len(cpus)})" if len(cpus) > 1 else "")
        for role, cpus in sorted(roles.items(), key=lambda item: -sum(item[1]))
    ]
    whose = "the driver and the cluster's processes over the run" if ray else "the run's process tree"
    print(f"    {sum(map(sum, roles.values())):.1f} CPU s by process ({whose}): {', '.join(parts)}")
    print(f"    the whole machine over the run: {usage.machine:.1f} CPU s (anyone else's load included)")
    sys.stdout.flush()


def check_scores(name: str, baseline: dict[str, np.ndarray], rows: pl.DataFrame, column: str, value) -> None:
    """curate's scores against the plain loop's, document by document (fails the benchmark)."""
    assert len(rows) == len(baseline["id"]) and rows["id"].n_unique() == len(rows), f"{name}: documents lost"
    got = rows.sort("id")[column].to_numpy()
    order = np.argsort(baseline["id"])
    expected = value({k: v[order] for k, v in baseline.items() if k != "id"})
    np.testing.assert_allclose(got, expected, rtol=1e-9, err_msg=f"{name}: {column} differs")


def train_models(tmp: Path, stages: list[str]) -> dict[str, Path]:
    quiet = {"log": lambda *_: None}
    dirs = {}
    if "perplexity" in stages:
        dirs["wiki"] = tmp / "wiki"
        lm.train([lm.source(str(REPO / "data" / "wiki"))], dirs["wiki"], vocab=16000, **quiet)
    if "harmful" in stages:
        dirs["harmful"], dirs["benign"] = tmp / "harmful", tmp / "benign"
        lm.train([lm.source(DAVIDSON, {"harmful": True}, "train")], dirs["harmful"], vocab=8000, **quiet)
        benign = [lm.source(DAVIDSON, {"harmful": False}, "train"), lm.source(str(REPO / "data" / "wiki"))]
        lm.train(benign, dirs["benign"], vocab=8000, **quiet)
    return dirs


def stage_rows(
    name: str,
    corpus: Path,
    tmp: Path,
    dirs: dict[str, Path],
    copies: int,
    size: tuple[int, int],
    ray: LocalRay | None = None,
) -> None:
    """Time the four ways over the corpus for one stage (curate on its own Ray, and with `ray` on
    that long-lived one as well), check curate's scores, print each row as it is measured: docs/s,
    MB/s, MB/s per core, and the ratio to the plain loop (per core)."""
    if name == "perplexity":
        models = [dirs["wiki"]]
        stage = {"perplexity": {"model": str(dirs["wiki"])}}
        column, value = "ppl", lambda b: 10.0 ** (-b["lp"][:, 0])
    else:
        models = [dirs["harmful"], dirs["benign"]]
        settings = {"reference": str(dirs["benign"]), "score": "contrastive", "threshold": 0.0, "guard": False}
        stage = {"harmful": {"model": str(dirs["harmful"]), **settings}}
        # curate.harmful.CONTRAST: the log10-probability difference over the harmful model's tokens
        column, value = "harmful_score", lambda b: (b["sums"][:, 0] - b["sums"][:, 1]) / b["tokens"][:, 0]
    cores = os.cpu_count() or 1
    n, nbytes = size
    print(f"\n{name} stage ({len(models)} model{'s' if len(models) > 1 else ''} per document)")
    print(f"{'':42s} {'time':>8s} {'docs/s':>8s} {'MB/s':>6s} {'MB/s/core':>9s} {'x loop':>7s} {'/core':>7s}")
    base = None

    def row(label: str, seconds: float, used: int) -> None:
        nonlocal base
        base = base or seconds
        mb, ratio = nbytes / 1e6 / seconds, base / seconds
        rates = f"{n / seconds:8.0f} {mb:6.2f} {mb / used:9.2f}"
        print(f"{label:42s} {seconds:7.1f}s {rates} {ratio:6.2f}x {ratio / used:6.2f}x")
        sys.stdout.flush()

    t0 = time.perf_counter()
    baseline = ccnet_loop(corpus, models)
    row("plain CCNet loop (1 process)", time.perf_counter() - t0, 1)
    ways = [(None, "(Ray start-up incl.)"), *([(ray, "--address (Ray running)")] if ray else [])]
    for on, how in ways:
        for workers, label in ((1, "curate run, 1 worker"), (None, f"curate run, {cores} workers")):
            tag = f"{name}-{workers}-{'address' if on else 'own'}"
            seconds, out, usage = curate_run(tmp, corpus, stage, workers, tag, on)
            check_scores(f"{name} ({label} {how})", baseline, out, column, value)
            row(f"{label} {how}", seconds, workers or cores)
            print_cpu(usage, on)
    row("KenLM only, pre-tokenised (1 process)", kenlm_only(models, copies), 1)


def where_time_goes(model_dir: Path, batch_docs: int = 256) -> None:
    """CPU seconds of each step over one copy of the sample in this process: the plain loop's steps
    (CCNet's normaliser, SentencePiece per line, KenLM per line), then curate's in batches of
    `batch_docs` documents as a stage actor gets them (`DocumentLines.of`, `PieceEncoder.segment`,
    KenLM on the distinct lines' ids), and `score_lines` whole."""
    texts = [
        json.loads(line)["text"]
        for f in sorted((REPO / "data" / "web").glob("*.jsonl.gz"))
        for line in gzip.open(f, "rt", encoding="utf-8")
    ]
    model = lm.LanguageModel(model_dir)
    lines = [line for text in texts for line in text.split("\n")]
    clock = time.process_time  # CPU seconds: what a core pays, and steadier than the wall clock on a shared machine
    t = [clock()]
    normalized = [normalize_reference(line) for line in lines]
    t.append(clock())
    pieces = [" ".join(model.sp.encode_as_pieces(line)) for line in normalized]
    t.append(clock())
    for p in pieces:
        model.kenlm.score(p)
    t.append(clock())
    plain = dict(zip(("normalisation", "SentencePiece", "KenLM"), np.diff(t), strict=True))
    batches = [texts[i : i + batch_docs] for i in range(0, len(texts), batch_docs)]
    t = [clock()]
    doc_lines = [DocumentLines.of(batch) for batch in batches]
    t.append(clock())
    for d in doc_lines:
        model.encoder.segment(d.distinct)
    t.append(clock())
    for d in doc_lines:  # the KenLM step alone: the pieces again, less the time they took just above
        model._line_scores(d.distinct)
    t.append(clock() - (t[2] - t[1]))
    for d in doc_lines:
        model.score_lines(d)
    t.append(clock())
    fast = dict(zip(("normalisation", "SentencePiece", "KenLM"), np.diff(t)[:3], strict=True))
    distinct = sum(len(d.distinct) for d in doc_lines)
    counts = f"{len(lines)} lines, {distinct} distinct non-empty within batches of {batch_docs} documents"
    print(f"\nwhere the time goes, one copy of the sample, 1 process ({counts}):")
    for name, steps in (("plain loop", plain), ("curate", fast)):
        total = sum(steps.values())
        shares = ", ".join(f"{k} {v:.2f}s ({v / total:.0%})" for k, v in steps.items())
        print(f"  {name}: {total:.2f}s = {shares}")
    whole = sum(fast.values())
    print(f"  curate's scoring code per core: {sum(plain.values()) / whole:.2f}x the plain loop")
    print(f"  curate's LanguageModel.score_lines on its own (pieces, KenLM, sums): {t[4] - t[3]:.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=20)
    parser.add_argument("--stages", default="perplexity,harmful", help="comma-separated: perplexity, harmful")
    parser.add_argument("--profile-only", action="store_true", help="print where the time goes and stop")
    parser.add_argument("--no-address", action="store_true", help="skip the rows of runs on a long-lived Ray")
    args = parser.parse_args()
    stages = args.stages.split(",")
    if args.profile_only:
        with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp_name:
            where_time_goes(train_models(Path(tmp_name), ["perplexity"])["wiki"])
        return
    with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        corpus = tmp / "corpus.jsonl"
        n, size = make_corpus(corpus, args.copies)
        dirs = train_models(tmp, stages)
        print(f"corpus: {n} documents, {size / 1e6:.1f} MB of text; {os.cpu_count()} cores; models: order 5")
        where_time_goes(dirs["wiki"] if "wiki" in dirs else dirs["harmful"])
        ray = None if args.no_address else stack.enter_context(LocalRay(os.cpu_count() or 1, tmp))
        if ray:
            warm_up(ray, tmp, dirs)
        for name in stages:
            stage_rows(name, corpus, tmp, dirs, args.copies, (n, size), ray)
        t0 = time.perf_counter()
        assert langid_loop(corpus) == n
        t_langid = time.perf_counter() - t0
        mb = size / 1e6 / t_langid
        print(f"\nlangid stage alone (1 process): {t_langid:.1f}s, {n / t_langid:.0f} docs/s, {mb:.2f} MB/s")


def warm_up(ray: LocalRay, tmp: Path, dirs: dict[str, Path]) -> None:
    """A first small run on the long-lived Ray: it creates Ray Data's actors (`_StatsActor`,
    `AutoscalingCoordinator`, `ActorLocationTracker`), which are detached and serve every later
    run, so the rows measure runs on a Ray already in use."""
    corpus = tmp / "warm-up.jsonl"
    with open(corpus, "w", encoding="utf-8") as out:
        for i in range(50):
            out.write(json.dumps({"id": f"w{i}", "text": f"warm up line {i}\nand another"}) + "\n")
    model = dirs.get("wiki") or dirs["harmful"]
    seconds, _, usage = curate_run(tmp, corpus, {"perplexity": {"model": str(model)}}, 1, "warm-up", ray)
    print(f"\nlong-lived Ray at {ray.address}; its first run (50 documents, creates Ray Data's actors): {seconds:.1f}s")
    print_cpu(usage, ray)


def langid_loop(corpus: Path) -> int:
    """The langid stage over the corpus in one process, in batches as an actor gets them."""
    stage = LangidStage(LangidConfig())
    stage.setup()
    n = 0
    with open(corpus, encoding="utf-8") as f:
        batch = []
        for line in f:
            batch.append(json.loads(line)["text"])
            if len(batch) == 256:
                n += len(stage.score(batch)["language"])
                batch = []
        n += len(stage.score(batch)["language"]) if batch else 0
    return n


if __name__ == "__main__":
    main()
