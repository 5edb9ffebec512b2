"""`curate run`: a job spec turned into a Ray Data plan, with resume, accounting and a report.

1. Models named in the job are trained (and calibrated) unless already up to date.
2. Inputs are cut into shards (slices of files). Pending shards flow through Ray Data: a read
   task validates records, then one actor pool per stage adds its score columns (models load
   once per actor). The driver gathers each shard's rows and writes `work/shard-N.parquet`
   atomically, stamped with its input: a rerun reuses a finished shard unless its input changed.
   The run holds a lock on the output directory (`curate.lock`), and a set of outputs is finished
   once manifest.json, removed before the split and written last, is there again.
3. Filters need run-wide numbers (CCNet percentiles), so each stage fits its thresholds on the
   scores of the documents that reach it (`fit_stages`), then every shard is split into kept/,
   rejected/ (with the stage and reason) and quarantine/ (`split_shard`), and the parts are
   collected into a `RunResult`. The index step (pipelines/indexing.py) returns it with dedup's
   changes; manifest.json and the report are written from it.

Stages come from `curate.registry`: their kind names their settings and class, and the class
declares the models to resolve, its score columns and the resources of its Ray workers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from curate import harmful, lm, registry, remote_dirs, storage
from curate.documents import (
    InputError,
    ShardSpec,
    expand_inputs,
    index_gz_shards,
    is_unreadable,
    plan_shards,
    read_shard,
)
from curate.lock import LOCK_NAME, output_lock
from curate.ray_runtime import init_ray, ray_log_file
from curate.stages import Stage
from curate.storage import Location
from pipelines import report
from pipelines.indexing import DEDUP, index_outputs
from pipelines.progress import Progress
from pipelines.result import RunResult, ShardOutput, concat, without_text
from pipelines.spec import Job, SpecError, StageEntry
from pipelines.training import train_step

QUARANTINE_COLUMNS = ["id", "source", "input_file", "input_row", "error", "raw"]
INTERNAL = ("_shard", "_shard_rows")
STAGE_WORKERS_PER_READ = 4  # stage workers one read task in flight feeds (score_shards)
IDS = "ids"  # the stage charged with the later copies of a duplicate id (job option duplicate_ids)
# a finished shard's stamp, in its Parquet metadata: the slice it was cut from and its file's sha256
STAMP_KEY = b"curate.shard"
# written last (manifest.json) and removed before a run rewrites the outputs: a directory without
# a manifest is an unfinished output set
FINAL_FILES = ("manifest.json", "report.json", "report.html")


def run_job(
    job: Job,
    out: str | Path | None = None,
    address: str | None = None,
    fresh: bool = False,
    log=print,
    verbose: bool = False,
) -> dict:
    out_dir = storage.absolute(out or job.output_dir())  # a local Path, or an object-store URL
    if storage.is_url(out_dir) and job.train:
        raise SpecError(f"`train` needs a local output directory, not {out_dir}: use a local --out")
    if storage.exists(out_dir) and not storage.is_dir(out_dir):
        raise SpecError(f"the output directory {out_dir} is a file: name a directory with --out")
    contents = [p for p in storage.children(out_dir) if storage.name(p) != LOCK_NAME]
    if fresh and contents and not storage.is_file(storage.join(out_dir, "work", "state.json")):
        raise SpecError(f"--fresh would delete {out_dir}, which is not a curate output directory (no work/state.json)")
    try:
        storage.make_dirs(out_dir)
    except OSError as e:
        raise SpecError(f"cannot make the output directory {out_dir}: {e.strerror}") from e
    with output_lock(out_dir, log):
        if fresh:  # everything but the lock, which this run holds
            for path in [p for p in storage.children(out_dir) if storage.name(p) != LOCK_NAME]:
                storage.remove_tree(path)
        return _run_locked(job, out_dir, address, log, verbose)


def _run_locked(job: Job, out_dir: Location, address: str | None, log, verbose: bool) -> dict:
    started = time.time()
    model_dirs = prepare_models(job, log)
    stages = [build_stage(entry, model_dirs) for entry in job.stages]
    check_inputs(stages)

    work = storage.join(out_dir, "work")
    state_file = storage.join(work, "state.json")
    config_hash = job.config_hash()
    if storage.is_file(state_file):
        previous = json.loads(storage.read_text(state_file))["config_hash"]
        if previous != config_hash:
            raise SpecError(
                f"{out_dir} holds a run of another configuration (hash {previous}, this job is {config_hash}): "
                "use another --out, or --fresh to start over"
            )
    storage.make_dirs(work)
    state = {"config_hash": config_hash, "job": job.model_dump(mode="json")}
    storage.write_text(state_file, json.dumps(state, indent=2))

    files = [(path, spec.source) for spec in job.inputs for path in expand_inputs([spec.path])]
    digests = {path: storage.sha256(path) for path, _ in files}
    shards = plan_shards(files, job.shard_docs)
    stamps = {s.shard: _stamp(s, digests[storage.as_location(s.path)]) for s in shards}
    pending = index_gz_shards(_pending(shards, stamps, work, log), storage.join(work, "gz-index"))
    log(
        f"{len(shards)} shards from {len(files)} files; "
        f"{len(shards) - len(pending)} already done, {len(pending)} to process"
    )
    if pending or job.index:  # Ray's records go to OUT/logs/ray.log (and the terminal with --verbose)
        if storage.is_url(out_dir):  # a log file stays on the driver's disk
            log(f"Ray's records of this run: {ray_log_file(storage.local_dir(out_dir))}")
        init_ray(address, verbose, ray_log_file(storage.local_dir(out_dir)))
    if pending:
        with contextlib.ExitStack() as serving:  # what stages need while the plan runs (LLM servers)
            for stage in stages:
                serving.enter_context(stage.serving())
            score_shards(pending, stages, job, work, address, verbose, stamps)

    t0 = time.time()
    result = split_outputs(shards, stages, work, out_dir, log, job.duplicate_ids)
    log(f"fitted thresholds and split outputs in {time.time() - t0:.1f} s")
    if job.index:
        result = index_outputs(job.index, out_dir, result, log)
    manifest = write_manifest(job, config_hash, shards, files, result, out_dir, time.time() - started, digests)
    report.write(out_dir, manifest, result, stages, job.report_samples)
    if job.train:
        train_step(job.train, out_dir, address, log)
    log(
        f"kept {manifest['kept']}, rejected {sum(manifest['rejected'].values())}, "
        f"quarantined {manifest['quarantined']} of {manifest['input']} documents"
    )
    log(f"report: {storage.join(out_dir, 'report.html')}")
    return manifest


def prepare_models(job: Job, log=print) -> dict[str, str]:
    """Train the job's models (skipped when up to date) and calibrate those that ask for it. In an
    object-store `models_dir` each model is trained or calibrated in a local copy, then uploaded
    with its card last (curate/remote_dirs.py): a model is uploaded before another's calibration
    names it as its reference."""
    dirs = {name: str(storage.join(storage.absolute(job.models_dir), name)) for name in job.models}
    retrained = set()
    for name, spec in job.models.items():
        with remote_dirs.editing(dirs[name], lm.CARD, log) as local:
            before = _card_text(local)
            lm.train(spec.sources(), local, order=spec.order, vocab=spec.vocab, log=log)
            if before != _card_text(local):
                retrained.add(name)
    for name, spec in job.models.items():
        with remote_dirs.editing(dirs[name], lm.CARD, log) as local:
            _calibrate(name, spec, local, dirs, retrained, log)
    return dirs


def _calibrate(name: str, spec, model_dir: Path, dirs: dict[str, str], retrained: set[str], log) -> None:
    """Calibrate a model of the job when it asks for it and its card is not up to date."""
    calibrated = json.loads(_card_text(model_dir) or "{}").get("thresholds", {}).get("harmful")
    cal = spec.calibrate
    outdated = calibrated and calibrated.get("contrast") != harmful.CONTRAST  # thresholds on another scale
    if cal and (retrained & {name, cal.reference, cal.guard} or not calibrated or outdated):
        reference = _resolve(cal.reference, dirs) if cal.reference else None
        guard = _resolve(cal.guard, dirs) if cal.guard else None
        log(f"calibrating {name} on {cal.labeled}")
        harmful.calibrate_model(
            model_dir,
            cal.labeled,
            cal.label_field,
            reference,
            log=log,
            guard=guard,
            web=cal.web,
            web_flagged=cal.web_flagged,
        )


def _card_text(model_dir: str | Path) -> str | None:
    path = Path(model_dir) / lm.CARD
    return path.read_text() if path.is_file() else None


def _resolve(name_or_path: str, model_dirs: dict[str, str]) -> str:
    if name_or_path in model_dirs:
        return model_dirs[name_or_path]
    location = storage.absolute(name_or_path)
    if storage.is_file(storage.join(location, lm.CARD)):
        return str(location)
    raise SpecError(
        f"model {name_or_path!r} is neither a name under `models` ({', '.join(model_dirs) or 'none'}) "
        "nor a model directory"
    )


def build_stage(entry: StageEntry, model_dirs: dict[str, str]) -> Stage:
    """The stage of a job entry, its model settings (`Stage.models`) resolved to directories."""
    cls = registry.stage_class(entry.kind)
    models = {name: _resolve_each(value, model_dirs) for name in cls.models if (value := getattr(entry.config, name))}
    return cls(entry.config.model_copy(update=models))


def _resolve_each(value: str | dict[str, str], model_dirs: dict[str, str]) -> str | dict[str, str]:
    """One model setting resolved: a name or path, or a mapping (language -> model) of them."""
    if isinstance(value, dict):
        return {key: _resolve(v, model_dirs) for key, v in value.items()}
    return _resolve(value, model_dirs)


def check_inputs(stages: list[Stage]) -> None:
    """Every column a stage reads (`Stage.inputs`) must come from an earlier stage."""
    made: set[str] = set()
    for stage in stages:
        if missing := [c for c in stage.inputs if c not in made]:
            raise SpecError(
                f"stage {stage.name} reads {', '.join(missing)}: put a stage that adds it first (e.g. langid)"
            )
        made.update(stage.columns)


def _shard_file(work: Location, shard: int) -> Location:
    return storage.join(work, f"shard-{shard:05d}.parquet")


def _stamp(spec: ShardSpec, sha256: str) -> dict[str, Any]:
    """What a finished shard must have been cut from to be reused: the same slice of the same bytes."""
    return {"path": spec.path, "start": spec.start, "stop": spec.stop, "source": spec.source, "sha256": sha256}


def _stamp_of(path: Location) -> dict[str, Any] | None:
    """The stamp of a finished shard file (from its Parquet footer, wherever it is stored); None
    when there is none or the file is unreadable. A store that cannot be reached is an error."""
    if not storage.is_file(path):
        return None
    try:
        metadata = storage.parquet_schema(path).metadata or {}
        return json.loads(metadata[STAMP_KEY]) if STAMP_KEY in metadata else None
    except storage.StorageError:
        raise
    except (OSError, ValueError, pa.ArrowException):
        return None


def _pending(shards: list[ShardSpec], stamps: dict[int, dict], work: Location, log) -> list[ShardSpec]:
    """The shards to score. A finished shard is reused only if it was cut from the same slice of
    the same bytes (its stamp): a resume never serves stale data. One whose file grew or shrank
    before it moves under its new number; the rest are stale and removed."""
    key = functools.partial(json.dumps, sort_keys=True)
    for leftover in storage.glob(".shard-*.parquet.moving", work):  # a run killed while moving shards: redone
        storage.remove(leftover)
    found = {path: _stamp_of(path) for path in storage.glob("shard-*.parquet", work)}
    by_stamp = {key(stamp): path for path, stamp in found.items() if stamp}
    reuse = {_shard_file(work, s.shard): by_stamp.get(key(stamps[s.shard])) for s in shards}
    reuse = {target: source for target, source in reuse.items() if source is not None}
    moving = {t: storage.join(work, f".{storage.name(s)}.moving") for t, s in reuse.items() if s != t}
    for target, temporary in moving.items():
        storage.move(reuse[target], temporary)
    stale = [path for path in found if storage.exists(path) and reuse.get(path) != path]
    if stale:
        digests = {stamp["path"]: stamp["sha256"] for stamp in stamps.values()}
        old = [stamp for path in stale if (stamp := found[path])]
        changed = sorted({o["path"] for o in old if o["path"] in digests and o["sha256"] != digests[o["path"]]})
        why = f"input changed since it was scored: {', '.join(changed)}" if changed else "cut from other input"
        log(f"{len(stale)} finished shards are stale ({why}): scoring their documents again")
        for path in stale:
            storage.remove(path)
    for target, temporary in moving.items():
        storage.move(temporary, target)
    return [s for s in shards if _shard_file(work, s.shard) not in reuse]


# ---------------------------------------------------------------- phase 1: read and score on Ray


def _shard_datasource(pending: list[ShardSpec], max_doc_bytes: int):
    """A Ray Data source with one read task per shard, so shards spread over the workers: a
    task's blocks are merged up to Ray Data's target block size, so a read task per file would
    put a file's small shards into one block, for one stage actor."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    def read(spec: ShardSpec) -> list[pa.Table]:
        t0 = time.perf_counter()
        table = read_shard(spec, max_doc_bytes)
        n = len(table)
        table = table.append_column("_shard", pa.array([spec.shard] * n, pa.int64()))
        table = table.append_column("_shard_rows", pa.array([n] * n, pa.int64()))
        return [table.append_column("_seconds_read", pa.array(np.full(n, (time.perf_counter() - t0) / n)))]

    class ShardDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
            return [
                ReadTask(
                    lambda spec=spec: read(spec),
                    BlockMetadata(
                        num_rows=spec.stop - spec.start, size_bytes=None, exec_stats=None, input_files=(spec.path,)
                    ),
                )
                for spec in pending
            ]

    return ShardDatasource()


def score_shards(
    pending: list[ShardSpec],
    stages: list[Stage],
    job: Job,
    work: Location,
    address: str | None,
    verbose: bool = False,
    stamps: dict[int, dict] | None = None,
) -> None:
    import ray

    init_ray(address)
    workers = job.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    # Ray's CPU shares are logical: reads and every stage's actors run side by side and share
    # the cores, so each asks for a fraction and none can starve the others of a slot.
    share = 1 / (len(stages) + 1)
    # few reads in flight: reading and validating a shard costs under a tenth of scoring it with
    # the cheapest stage (langid), and every read task in flight is a Ray worker process of its own
    # (Ray and pyarrow imported: 1.5-2 CPU s each) on the cores the stages use
    ds = ray.data.read_datasource(
        _shard_datasource(pending, job.max_doc_bytes),
        override_num_blocks=len(pending),
        num_cpus=share,
        concurrency=-(-workers // STAGE_WORKERS_PER_READ),
    )
    for stage in stages:
        ds = stage.plan(ds, job.batch_docs, stage.resources.resolve(share, workers, job.stage_resources))
    docs = sum(s.stop - s.start for s in pending)
    # with --verbose Ray's own lines share the terminal, so progress prints lines, not one in place
    with Progress("scoring", len(pending), docs, updating=False if verbose else None) as progress:
        sink = _ShardSink(work, progress, stamps or {})
        # no prefetching: with it Ray Data hands over a block only once the next one exists, so the
        # shard that finishes last but one would wait for the slowest (an LLM shard) to be written
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
            sink.add(batch)
    if sink.open:
        raise RuntimeError(f"shards {sorted(sink.open)} ended incomplete")


class _ShardSink:
    """Gathers rows by shard on the driver; writes a shard once all its rows have arrived."""

    def __init__(self, work: Location, progress: Progress, stamps: dict[int, dict]):
        self.work, self.progress, self.stamps = work, progress, stamps
        self.parts: dict[int, list[pa.Table]] = defaultdict(list)
        self.seen: dict[int, int] = defaultdict(int)

    @property
    def open(self) -> list[int]:
        return list(self.parts)

    def add(self, batch: pa.Table) -> None:
        if not len(batch):
            return
        shard_col = batch["_shard"].to_numpy()
        for shard in np.unique(shard_col):
            part = batch.filter(pa.array(shard_col == shard))
            shard = int(shard)
            self.parts[shard].append(part)
            self.seen[shard] += len(part)
            if self.seen[shard] == part["_shard_rows"][0].as_py():
                table = pa.concat_tables(self.parts.pop(shard)).sort_by("input_row").drop_columns(list(INTERNAL))
                if shard in self.stamps:
                    metadata = {**(table.schema.metadata or {}), STAMP_KEY: json.dumps(self.stamps[shard])}
                    table = table.replace_schema_metadata(metadata)
                storage.write_parquet(table, _shard_file(self.work, shard), compressed=False)
                self.progress.advance(len(table))


# ---------------------------------------------------------------- phase 2: fit thresholds, split


def split_outputs(
    shards: list[ShardSpec],
    stages: list[Stage],
    work: Location,
    out_dir: Location,
    log,
    duplicate_ids: str = "reject",
) -> RunResult:
    """Fit the stages on the run's scores, split every shard with the fitted parameters, collect."""
    scored = [_shard_file(work, s.shard) for s in shards]
    scores = read_scores(scored, stages)
    duplicates = find_duplicates(scores, duplicate_ids)
    params = fit_stages(stages, scores, log, duplicates)
    for name in FINAL_FILES:  # from here until the manifest is written again, the output set is unfinished
        storage.remove(storage.join(out_dir, name))
    for sub in ("kept", "rejected", "quarantine"):
        storage.remove_tree(storage.join(out_dir, sub))
    # a thread per core: polars and Parquet's compression release the GIL, and the cores are idle
    # now that scoring is over (the split of 754 MB took 7.9 s on one thread)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        split = list(
            pool.map(lambda s, path: split_shard(s.shard, path, stages, params, out_dir, duplicates), shards, scored)
        )
    result = RunResult.collect(split, params, scores)
    log(f"wrote {len(result.files)} output files to {out_dir}")
    return result


def read_scores(files: list[Location], stages: list[Stage]) -> pl.DataFrame:
    """id, source, error and every stage's score columns of all the scored shards."""
    columns = ["id", "source", "error", "input_file", "input_row"] + [c for s in stages for c in s.columns]
    return (
        pl.concat([pl.from_arrow(storage.read_parquet(f, columns=columns)) for f in files], how="vertical_relaxed")
        if files
        else pl.DataFrame()
    )


def find_duplicates(scores: pl.DataFrame, mode: str) -> pl.DataFrame:
    """The later copies of ids seen earlier in the run (input order), with the reason that names
    the first copy: `input_file`, `input_row`, `_duplicate`. Empty when `mode` is keep; with
    `error`, the first repeat stops the run."""
    found = pl.DataFrame(schema={"input_file": pl.String, "input_row": pl.Int64, "_duplicate": pl.String})
    if mode == "keep" or not len(scores):
        return found
    valid = scores.filter(pl.col("error").is_null()).select("id", "input_file", "input_row")
    repeats = valid.with_columns(
        first_file=pl.col("input_file").first().over("id"),
        first_row=pl.col("input_row").first().over("id"),
        copy=pl.col("input_row").cum_count().over("id"),
    ).filter(pl.col("copy") > 1)
    if mode == "error" and len(repeats):
        r = repeats.row(0, named=True)
        raise InputError(
            f"duplicate id {r['id']!r}: {r['input_file']} row {r['input_row']} repeats {r['first_file']} row "
            f"{r['first_row']} (the job's duplicate_ids: error; `reject` or `keep` let the run go on)"
        )
    reason = pl.format("duplicate id '{}': first seen in {} row {}", "id", "first_file", "first_row")
    return repeats.select("input_file", "input_row", _duplicate=reason)


def _undecided(docs: pl.DataFrame, duplicates: pl.DataFrame) -> pl.DataFrame:
    """Valid documents with their decision columns, set only for the later copies of a duplicate id."""
    docs = docs.join(duplicates, on=["input_file", "input_row"], how="left", maintain_order="left")
    return docs.with_columns(
        reject_stage=pl.when(pl.col("_duplicate").is_not_null()).then(pl.lit(IDS)).otherwise(pl.lit(None, pl.String)),
        reject_reason=pl.col("_duplicate"),
    ).drop("_duplicate")


def fit_stages(
    stages: list[Stage], scores: pl.DataFrame, log, duplicates: pl.DataFrame | None = None
) -> list[dict[str, Any]]:
    """Each stage's run-wide parameters, fitted on the valid documents that reach it (not
    rejected by an earlier stage, nor a later copy of a duplicate id)."""
    valid = _undecided(scores.filter(pl.col("error").is_null()), _or_none(duplicates))
    params = []
    for stage in stages:
        p = stage.fit(valid.filter(pl.col("reject_stage").is_null()))
        params.append(p)
        valid = _apply(valid, stage, p)
        log(f"stage {stage.name}: {json.dumps(p)}")
    return params


def _or_none(duplicates: pl.DataFrame | None) -> pl.DataFrame:
    return find_duplicates(pl.DataFrame(), "keep") if duplicates is None else duplicates


def split_shard(
    shard: int,
    path: Location,
    stages: list[Stage],
    params: list[dict[str, Any]],
    out_dir: Location,
    duplicates: pl.DataFrame | None = None,
) -> ShardOutput:
    """Write one scored shard's kept/, rejected/ and quarantine/ parts (plus the documents the
    stages make from the kept ones)."""
    df = pl.from_arrow(storage.read_parquet(path))
    timing = [c for c in df.columns if c.startswith("_seconds_")]
    seconds = {c.removeprefix("_seconds_"): float(df[c].sum()) for c in timing}
    df = df.drop(timing)
    docs = _undecided(df.filter(pl.col("error").is_null()).drop(["error", "raw"]), _or_none(duplicates))
    for stage, p in zip(stages, params):
        docs = _apply(docs, stage, p)
    parts = {
        "kept": docs.filter(pl.col("reject_stage").is_null()).drop(["reject_stage", "reject_reason"]),
        "rejected": docs.filter(pl.col("reject_stage").is_not_null()),
        "quarantine": df.filter(pl.col("error").is_not_null()).select(QUARANTINE_COLUMNS),
    }
    # new documents made from the kept ones (WRAP rephrases) are kept beside them
    synthetic = concat([s for s in (stage.synthesize(parts["kept"]) for stage in stages) if s is not None])
    if len(synthetic):
        parts["kept"] = pl.concat([parts["kept"], synthetic], how="diagonal_relaxed")
    files = {}
    for sub, frame in parts.items():
        if len(frame):
            rel = f"{sub}/part-{shard:05d}.parquet"
            digest = storage.write_parquet(frame.to_arrow(), storage.join(out_dir, rel))
            files[rel] = {"rows": len(frame), "sha256": digest}
    rows = {sub: without_text(frame) if len(frame) else pl.DataFrame() for sub, frame in parts.items()}
    return ShardOutput(
        files=files, synthetic=without_text(synthetic) if len(synthetic) else pl.DataFrame(), seconds=seconds, **rows
    )


def _apply(df: pl.DataFrame, stage: Stage, params: dict) -> pl.DataFrame:
    """Run one stage's decision; a document keeps the first stage that rejected it."""
    df = stage.decide(df, params)
    first = pl.col("reject_stage").is_null() & pl.col("_reason").is_not_null()
    return df.with_columns(
        reject_stage=pl.when(first).then(pl.lit(stage.name)).otherwise(pl.col("reject_stage")),
        reject_reason=pl.when(first).then(pl.col("_reason")).otherwise(pl.col("reject_reason")),
    ).drop("_reason")


# ---------------------------------------------------------------- accounting


def write_manifest(
    job: Job,
    config_hash: str,
    shards: list[ShardSpec],
    files,
    result: RunResult,
    out_dir: Location,
    seconds: float,
    digests: dict[Location, str] | None = None,
) -> dict:
    scores = result.scores
    total_input = sum(s.stop - s.start for s in shards)
    stage_names = [e.kind for e in job.stages] + ([DEDUP] if job.index and job.index.dedup_min_tokens else [])
    rejected = result.rejected
    duplicates = int((rejected["reject_stage"] == IDS).sum()) if len(rejected) else 0
    if duplicates:  # shown only when the run had some, so that a run without keeps its manifest's shape
        stage_names = [IDS] + stage_names

    def counts(source: str | None) -> dict:
        def n(frame: pl.DataFrame) -> int:
            if not len(frame):
                return 0
            return len(frame) if source is None else int((frame["source"] == source).sum())

        rejected = result.rejected
        by_stage = {
            name: n(rejected.filter(pl.col("reject_stage") == name)) if len(rejected) else 0 for name in stage_names
        }
        synthetic = n(result.synthetic)  # inside kept/, but made here, not input
        return {
            "input": n(scores),
            "kept": n(result.kept) - synthetic,
            "synthetic": synthetic,
            "rejected": by_stage,
            "quarantined": n(result.quarantine),
        }

    manifest = {
        "job": job.name,
        "config_hash": config_hash,
        **counts(None),
        "sources": {src: counts(src) for src in sorted(scores["source"].unique().to_list())} if len(scores) else {},
        "inputs": [
            {"path": str(p), "source": s, "sha256": (digests or {}).get(p) or storage.sha256(p)} for p, s in files
        ],
        # damaged files: where reading stopped; each unreadable rest is one of the quarantined
        "unreadable": [
            {"file": r["input_file"], "row": r["input_row"], "error": r["error"]}
            for r in (result.quarantine.iter_rows(named=True) if len(result.quarantine) else [])
            if is_unreadable(r["error"])
        ],
        "shards": result.files,
        "stages": ([{"stage": IDS, "duplicate_ids": job.duplicate_ids}] if duplicates else [])
        + [{"stage": name, **p} for name, p in zip([n for n in stage_names if n != IDS], result.params)],
        "index": result.index,
        "seconds": {"total": round(seconds, 2), **{k: round(v, 2) for k, v in result.seconds.items()}},
    }
    for scope, c in [("run", manifest)] + list(manifest["sources"].items()):
        accounted = c["kept"] + sum(c["rejected"].values()) + c["quarantined"]
        if accounted != c["input"]:
            raise RuntimeError(
                f"accounting broken for {scope}: input {c['input']} != kept + rejected + quarantined {accounted}"
            )
    if manifest["input"] != total_input:
        raise RuntimeError(f"accounting broken: {total_input} input records but {manifest['input']} rows were read")
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    storage.write_text(storage.join(out_dir, "manifest.json"), text)
    return manifest
