"""`curate ablate`: estimate data mixtures by merging models trained on partitions (Na et al. 2024).

Steps, each reused on a later run when its inputs are unchanged:
1. Partition: the documents of `partitions.inputs` are grouped by a column (`source`, a DataMan
   domain, `ppl_bucket`, ...) or by a {document id: partition} mapping and written to
   `OUT/partitions/NAME.jsonl`; each partition gets its own index (`OUT/indexes/p-NAME`), built
   with the one tokenizer (trained on `base`), so partitions, unions and the seed share token ids.
   A document's train/val/test split is a hash of its id, so it is the same in every index.
2. Seed: a model trained from scratch on `base` (`OUT/seed`).
3. Pool: one model per partition, continued from the seed with the same token budget (constant
   learning rate, fresh optimizer), one Ray task per partition (`OUT/pool/NAME`, with `card.json`
   naming its data, seed and settings). A model whose card matches is not retrained, so a new
   partition trains only its own model. A failed training is reported and retried `retries` times;
   if it still fails the run stops with an error naming it, and the finished models stay.
4. Candidates: all uniform mixtures of `mixtures.sizes` partitions (a seeded sample of
   `max_mixtures` beyond the budget), plus weighted and macro (average of averages) ones. Each is
   merged (`OUT/merged/NAME`, an ordinary checkpoint) and evaluated on every evaluation set: the
   held-out split of each partition, and `eval.extra` text files.
5. Validation: `mixtures.real` uniform candidates are also trained for real on the union of their
   partitions (`OUT/real/NAME`), from the seed, with the budget of their parts together (k
   partitions: k times the steps), and Pearson and Spearman correlations between proxy and real
   perplexity are computed per evaluation set.
6. `report.json` and `report.html` (models/ablate_report.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from curate import storage
from curate.atomic import write_text
from curate.documents import expand_inputs, read_texts
from indexes.layout import CARD_NAME
from models.ablate_spec import AblateSpec
from models.config import TrainConfig

CARD = "card.json"


class AblationError(ValueError):
    """A partition or training that cannot be done; the message names it."""


@dataclass(frozen=True)
class TrainJob:
    """One model to train: `config` on `index_dir` into `out_dir`, from `init_from` when given;
    `key` identifies everything that decides the weights (a card with the same key is reused)."""

    name: str
    index_dir: Path
    out_dir: Path
    config: TrainConfig
    init_from: Path | None
    key: str


def train_model(job: TrainJob) -> dict:
    """The real training of a job (models/train.py), quiet; its summary."""
    from models.train import run_training

    return run_training(job.config, job.index_dir, job.out_dir, log=lambda _: None, init_from=job.init_from)


def run_ablation(
    spec: AblateSpec,
    address: str | None = None,
    verbose: bool = False,
    log: Callable[[str], None] = print,
    train_fn: Callable[[TrainJob], dict] = train_model,
) -> dict:
    """Run the whole ablation job and return the report (also written to OUT/report.json/html)."""
    from curate.ray_runtime import init_ray
    from models.ablate_report import write_report

    out = spec.output_dir()
    out.mkdir(parents=True, exist_ok=True)
    # many short trainings and evaluations: torch.compile's warm-up (per process, per shape) costs
    # more than it saves unless the job asks for it (kernels/dispatch.py)
    os.environ["CURATE_KERNELS_COMPILE"] = "1" if spec.compile_kernels else "0"
    init_ray(address, verbose, out / "logs" / "ray.log")
    t_start = time.perf_counter()
    tokenizer = _tokenizer(spec, out, log)
    base_index = _ensure_index("base", [str(p) for p in expand_inputs(spec.base)], tokenizer, out, log)
    files = partition_documents(spec, out / "partitions", log)
    indexes = {name: _ensure_index(f"p-{name}", [str(f)], tokenizer, out, log) for name, f in files.items()}

    seed_cfg = spec.seed_config()
    seed_job = TrainJob("seed", base_index, out / "seed", seed_cfg, None, _key(seed_cfg.run_hash(), _card(base_index)))
    seed = train_all([seed_job], train_fn, spec.retries, log)
    seed_ckpt = seed_job.out_dir / "checkpoint"

    part_cfg = spec.partition_config()
    pool_jobs = [
        TrainJob(
            name,
            indexes[name],
            out / "pool" / name,
            part_cfg,
            seed_ckpt,
            _key(part_cfg.run_hash(), _card(indexes[name]), seed_job.key),
        )
        for name in files
    ]
    pool = train_all(pool_jobs, train_fn, spec.retries, log)
    _note_stale(out / "pool", set(files), log)

    candidates = candidate_mixtures(list(files), spec)
    extra = {
        name: _ensure_index(f"e-{name}", [str(p) for p in expand_inputs(files)], tokenizer, out, log)
        for name, files in spec.eval.extra.items()
    }
    clash = sorted(set(extra) & set(indexes))
    if clash:
        raise AblationError(f"eval.extra: {clash} are partition names; name the extra evaluation sets otherwise")
    eval_sets = load_eval_sets({**indexes, **extra}, spec)
    log(f"evaluating {len(candidates)} merged candidates on {len(eval_sets)} evaluation sets")
    proxies = {}
    for cand in candidates:
        t0 = time.perf_counter()
        merged = merge_candidate(cand, out / "pool", out / "merged")
        merge_s = time.perf_counter() - t0
        proxies[cand["name"]] = {**cand, "merge_seconds": merge_s, **evaluate_model(merged, eval_sets)}

    real_names = sample_real(candidates, spec)
    real_jobs = []
    for name in real_names:
        parts = next(c for c in candidates if c["name"] == name)["parts"]
        index = _ensure_index(f"u-{name}", [str(files[p]) for p in parts], tokenizer, out, log)
        cfg = spec.partition_config(part_cfg.steps * len(parts))
        real_jobs.append(
            TrainJob(name, index, out / "real" / name, cfg, seed_ckpt, _key(cfg.run_hash(), _card(index), seed_job.key))
        )
    real_cards = train_all(real_jobs, train_fn, spec.retries, log)
    real = {
        job.name: {**real_cards[job.name], **evaluate_model(job.out_dir / "checkpoint", eval_sets)} for job in real_jobs
    }

    report = {
        "name": spec.name,
        "output": str(out),
        "partitions": {name: {**_partition_stats(files[name]), "index": str(indexes[name])} for name in files},
        "seed": seed["seed"],
        "pool": pool,
        "eval_sets": {name: s["info"] for name, s in eval_sets.items()},
        "candidates": proxies,
        "real": real,
        "correlations": correlations(proxies, real, list(eval_sets)),
        "cost": cost(pool, proxies, real),
        "retried": [f for job_cards in (seed, pool, real_cards) for c in job_cards.values() for f in c["failures"]],
        "seconds": time.perf_counter() - t_start,
    }
    write_report(out, report)
    return report


def partition_documents(spec: AblateSpec, folder: Path, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Group the documents into partitions and write each to FOLDER/NAME.jsonl (unchanged bytes
    when the documents are unchanged, so that their index and model are reused)."""
    rule = spec.partitions
    mapping = _read_mapping(rule.mapping) if rule.mapping else None
    groups: dict[str, list[dict]] = {}
    unassigned = 0
    for doc in read_texts(rule.inputs):
        if mapping is not None:
            value = mapping.get(doc["id"])
            if value is None:
                unassigned += 1
                continue
        else:
            value = doc.get(rule.by)
            if value is None or value == "":
                raise AblationError(f"document {doc['id']} has no `{rule.by}` to partition by (partitions.by)")
        groups.setdefault(str(value), []).append(doc)
    if unassigned:
        log(f"{unassigned} documents are not in {rule.mapping} and belong to no partition")
    if rule.only:
        missing = sorted(set(rule.only) - set(groups))
        if missing:
            raise AblationError(f"partitions.only names {missing}, not found; found: {sorted(groups)}")
        groups = {k: groups[k] for k in rule.only}
    if len(groups) < 2:
        raise AblationError(f"{len(groups)} partition(s) found ({sorted(groups)}); an ablation needs at least 2")
    names = {}
    for value in sorted(groups):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("_") or "empty"
        if name in names.values():
            raise AblationError(f"partitions {value!r} and another have the same file name {name!r}")
        names[value] = name
    small = {v: len(d) for v, d in groups.items() if len(d) < rule.min_docs}
    if small:
        raise AblationError(f"partitions with fewer than partitions.min_docs={rule.min_docs} documents: {small}")
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for value, docs in sorted(groups.items()):
        path = folder / f"{names[value]}.jsonl"
        text = "".join(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n" for d in docs)
        if not path.exists() or path.read_text() != text:
            write_text(path, text)
        files[names[value]] = path
    log(f"{len(files)} partitions: " + ", ".join(f"{n} ({len(groups[v])} docs)" for v, n in names.items()))
    return files


def train_all(
    jobs: list[TrainJob], train_fn: Callable[[TrainJob], dict], retries: int, log: Callable[[str], None] = print
) -> dict[str, dict]:
    """Train the jobs whose card does not match, one Ray task each, in parallel; retry a failed one
    up to `retries` times, then raise naming it (the others are finished and kept). Returns
    each job's card: reused, tokens, seconds, failures (the errors of attempts that failed)."""
    import ray

    cards, todo = {}, []
    for job in jobs:
        card = _read_card(job.out_dir)
        if card and card.get("key") == job.key and (job.out_dir / "checkpoint").is_dir():
            cards[job.name] = {**card, "reused": True, "failures": []}
        else:
            todo.append(job)
    if cards:
        log(f"reusing {len(cards)} trained model(s): {', '.join(cards)}")
    if not todo:
        return cards
    log(f"training {len(todo)} model(s) as Ray tasks: {', '.join(j.name for j in todo)}")
    env = {"CURATE_KERNELS_COMPILE": os.environ.get("CURATE_KERNELS_COMPILE", "1")}
    task = ray.remote(num_cpus=1, max_retries=0)(_train_task).options(runtime_env={"env_vars": env})
    for job in todo:
        card = _read_card(job.out_dir)
        if card and card.get("key") != job.key:  # trained on other data or settings: start again
            shutil.rmtree(job.out_dir)
    pending = {task.remote(train_fn, job): (job, 1) for job in todo}
    failures: dict[str, list[dict]] = {job.name: [] for job in todo}
    failed = []
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        job, attempt = pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as e:  # the task's error (RayTaskError wraps it) or a lost worker
            error = f"{type(getattr(e, 'cause', None) or e).__name__}: {getattr(e, 'cause', None) or e}"
            error = error.splitlines()[0][:300]
            failures[job.name].append({"model": job.name, "attempt": attempt, "error": error})
            if attempt <= retries:
                log(f"training {job.name} failed (attempt {attempt} of {retries + 1}): {error}; retrying")
                pending[task.remote(train_fn, job)] = (job, attempt + 1)
            else:
                log(f"training {job.name} failed (attempt {attempt} of {retries + 1}): {error}")
                failed.append(f"{job.name} ({error})")
            continue
        card = {
            "key": job.key,
            "name": job.name,
            "index": str(job.index_dir),
            "init_from": _str(job.init_from),
            "train": job.config.model_dump(mode="json"),
            **result,
        }
        write_text(job.out_dir / CARD, json.dumps(card, indent=2) + "\n")
        cards[job.name] = {**card, "reused": False, "failures": failures[job.name]}
        log(
            f"trained {job.name}: {result['tokens']:,} tokens in {result['seconds']:.1f} s, val loss "
            f"{result['val_loss']:.4f}"
        )
    if failed:
        raise AblationError(
            f"training failed after {retries + 1} attempts: {'; '.join(failed)}; "
            f"the models that finished are kept and a rerun trains only the missing ones"
        )
    return cards


def _train_task(train_fn: Callable[[TrainJob], dict], job: TrainJob) -> dict:
    torch.set_num_threads(1)  # one core per task: the tasks run side by side
    t0 = time.perf_counter()
    summary = train_fn(job)
    cfg = job.config
    return {
        "tokens": cfg.steps * cfg.batch_size * cfg.seq_len,
        "seconds": time.perf_counter() - t0,
        "val_loss": summary.get("val_loss"),
        "parameters": summary.get("parameters"),
    }


def candidate_mixtures(names: list[str], spec: AblateSpec) -> list[dict]:
    """Uniform mixtures of every size in `mixtures.sizes` (a seeded sample of `max_mixtures`
    when there are more), then the weighted and macro candidates of the job."""
    rule = spec.mixtures
    uniform = [list(c) for k in rule.sizes if k <= len(names) for c in itertools.combinations(names, k)]
    if len(uniform) > rule.max_mixtures:
        rng = np.random.default_rng(rule.seed)
        keep = sorted(rng.choice(len(uniform), rule.max_mixtures, replace=False))
        uniform = [uniform[i] for i in keep]
    out = [{"name": "+".join(c), "kind": "uniform", "parts": c, "weights": [1 / len(c)] * len(c)} for c in uniform]
    for w in rule.weighted:
        _known(list(w), names, "mixtures.weighted")
        total = sum(w.values())
        parts = sorted(w)
        name = "+".join(f"{p}*{w[p]:g}" for p in parts)
        out.append({"name": name, "kind": "weighted", "parts": parts, "weights": [w[p] / total for p in parts]})
    for groups in rule.macro:
        _known([p for g in groups for p in g], names, "mixtures.macro")
        parts = [p for g in groups for p in g]
        weights = [1 / (len(groups) * len(g)) for g in groups for _ in g]
        name = "(" + ")+(".join("+".join(g) for g in groups) + ")"
        out.append({"name": name, "kind": "macro", "parts": parts, "weights": weights, "groups": groups})
    return out


def merge_candidate(cand: dict, pool: Path, merged_dir: Path) -> Path:
    """The candidate's merged checkpoint (micro, weighted or macro) under merged_dir."""
    from models.merge import macro_merge, merge_checkpoints

    target = merged_dir / _dir_name(cand["name"])
    meta = {"mixture": cand["name"]}
    if cand["kind"] == "macro":
        return macro_merge([[pool / p / "checkpoint" for p in g] for g in cand["groups"]], target, meta)
    return merge_checkpoints([pool / p / "checkpoint" for p in cand["parts"]], target, cand["weights"], meta)


def load_eval_sets(indexes: dict[str, Path], spec: AblateSpec) -> dict[str, dict]:
    """The evaluation windows of every set: `eval.windows` windows of `seq_len` + 1 tokens of the
    held-out split of each partition index (and of each `eval.extra` index), packed as in training
    (documents after an end-of-text token) in a fixed seeded order; the same for every model."""
    from models.data import TokenShards, batches

    seq_len = spec.seed_config().seq_len
    sets = {}
    for name, index in indexes.items():
        shards = TokenShards(index)
        docs = shards.split_docs(spec.eval.split)
        tokens = int((shards.doc_end[docs] - shards.doc_start[docs] + 1).sum())
        n = min(spec.eval.windows, (tokens - 1) // seq_len)
        if n < 1:
            raise AblationError(f"the {spec.eval.split} split of {name} has {tokens} tokens, too few to evaluate on")
        stream = batches(shards, spec.eval.split, seq_len, 1, seed=0)
        x, y = (torch.cat(t) for t in zip(*itertools.islice(stream, n)))
        info = {
            "on": f"{spec.eval.split} split of {index.name}",
            "docs": len(docs),
            "windows": n,
            "tokens": n * seq_len,
        }
        sets[name] = {"x": x, "y": y, "info": info}
    return sets


@torch.no_grad()
def evaluate_model(checkpoint: Path, eval_sets: dict[str, dict], batch_size: int = 16) -> dict:
    """Loss and perplexity of a checkpoint on every evaluation set, and the seconds taken."""
    from models.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    model, _ = load_checkpoint(checkpoint)
    results = {}
    for name, s in eval_sets.items():
        total = sum(
            float(model(x, y, reduction="none").double().sum())
            for x, y in zip(s["x"].split(batch_size), s["y"].split(batch_size))
        )
        loss = total / s["y"].numel()
        results[name] = {"loss": loss, "perplexity": math.exp(loss)}
    return {"checkpoint": str(checkpoint), "eval": results, "eval_seconds": time.perf_counter() - t0}


def sample_real(candidates: list[dict], spec: AblateSpec) -> list[str]:
    """The uniform candidates trained for real: a seeded sample of `mixtures.real`."""
    uniform = [c["name"] for c in candidates if c["kind"] == "uniform"]
    n = min(spec.mixtures.real, len(uniform))
    rng = np.random.default_rng(spec.mixtures.seed + 1)
    return [uniform[i] for i in sorted(rng.choice(len(uniform), n, replace=False))]


def correlations(proxies: dict, real: dict, eval_names: list[str]) -> dict:
    """Pearson and Spearman correlations between proxy and real perplexity over the mixtures
    trained for real, per evaluation set (null where fewer than 3 mixtures or a constant side)."""
    from scipy import stats

    out = {}
    names = sorted(real)
    for e in eval_names:
        proxy = [proxies[n]["eval"][e]["perplexity"] for n in names]
        truth = [real[n]["eval"][e]["perplexity"] for n in names]
        row = {"mixtures": len(names), "proxy": proxy, "real": truth, "pearson": None, "spearman": None}
        if len(names) >= 3 and np.ptp(proxy) > 0 and np.ptp(truth) > 0:
            row["pearson"] = float(stats.pearsonr(proxy, truth).statistic)
            row["spearman"] = float(stats.spearmanr(proxy, truth).statistic)
        out[e] = row
    return out


def cost(pool: dict, proxies: dict, real: dict) -> dict:
    """Tokens and seconds of each side: the pool (paid once, for every candidate) plus merging and
    evaluating per candidate, against training each real model (plus evaluating it)."""
    pool_tokens = sum(c["tokens"] for c in pool.values())
    pool_seconds = sum(c["seconds"] for c in pool.values())
    real_tokens = sum(r["tokens"] for r in real.values())
    real_seconds = sum(r["seconds"] for r in real.values())
    per_token = real_seconds / real_tokens if real_tokens else None
    all_tokens = sum(len(p["parts"]) for p in proxies.values() if p["kind"] == "uniform") * (
        pool_tokens / len(pool) if pool else 0
    )
    return {
        "proxy": {
            "pool_models": len(pool),
            "pool_tokens": pool_tokens,
            "pool_train_seconds": pool_seconds,
            "candidates": len(proxies),
            "merge_seconds": sum(p["merge_seconds"] for p in proxies.values()),
            "eval_seconds": sum(p["eval_seconds"] for p in proxies.values()),
        },
        "real": {
            "models": len(real),
            "tokens": real_tokens,
            "train_seconds": real_seconds,
            "eval_seconds": sum(r["eval_seconds"] for r in real.values()),
            "all_uniform_candidates_tokens": all_tokens,
            "all_uniform_candidates_seconds_estimate": all_tokens * per_token if per_token else None,
        },
    }


def _tokenizer(spec: AblateSpec, out: Path, log: Callable[[str], None]) -> Path:
    """The job's tokenizer, or a BPE trained on `base` (retrained only when `base` changes)."""
    from curate.tokenizer import train_tokenizer

    if spec.tokenizer:
        if not Path(spec.tokenizer).is_file():
            raise AblationError(f"tokenizer {spec.tokenizer} does not exist")
        return Path(spec.tokenizer)
    path = out / "tokenizer.json"
    key = _key(str(spec.vocab), *[storage.sha256(p) for p in expand_inputs(spec.base)])
    stamp = out / "tokenizer.key"
    if path.is_file() and stamp.is_file() and stamp.read_text() == key:
        return path
    log(f"training a byte-level BPE tokenizer (vocab {spec.vocab}) on the base documents")
    train_tokenizer((d["text"] for d in read_texts(spec.base)), path, spec.vocab)
    write_text(stamp, key)
    return path


def _ensure_index(name: str, files: list[str], tokenizer: Path, out: Path, log: Callable[[str], None]) -> Path:
    """OUT/indexes/NAME over the files, rebuilt only when the files or the tokenizer change."""
    from indexes.build import build_index

    index = out / "indexes" / _dir_name(name)
    key = _key(storage.sha256(tokenizer), *[f"{Path(f).name}:{storage.sha256(Path(f))}" for f in files])
    stamp = index.with_name(index.name + ".key")
    if (index / CARD_NAME).is_file() and stamp.is_file() and stamp.read_text() == key:
        return index
    build_index(files, tokenizer, index, overwrite=True, log=lambda _: None)
    write_text(stamp, key)
    log(f"indexed {name}")
    return index


def _note_stale(pool: Path, names: set[str], log: Callable[[str], None]) -> None:
    """Models of partitions no longer in the job stay on disk (a later run may want them) but are
    named so that nobody mistakes them for part of this run's pool."""
    stale = sorted(p.name for p in pool.iterdir() if p.is_dir() and p.name not in names)
    if stale:
        log(f"the pool also holds models of partitions not in this job (kept, unused): {', '.join(stale)}")


def _partition_stats(path: Path) -> dict:
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    return {"file": str(path), "documents": len(docs), "bytes": sum(len(d["text"].encode()) for d in docs)}


def _read_mapping(path: str) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AblationError(f"partitions.mapping: {path} not found") from None
    except json.JSONDecodeError as e:
        raise AblationError(f"partitions.mapping: {path} is not JSON: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise AblationError(f"partitions.mapping: {path} must be a JSON object of document id -> partition name")
    return data


def _read_card(dir: Path) -> dict | None:
    try:
        return json.loads((dir / CARD).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _card(index: Path) -> str:
    """What an index was built from (its files and tokenizer), as _ensure_index stamped it."""
    return index.with_name(index.name + ".key").read_text()


def _key(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _known(parts: list[str], names: list[str], where: str) -> None:
    unknown = sorted(set(parts) - set(names))
    if unknown:
        raise AblationError(f"{where}: unknown partitions {unknown}; known: {names}")


def _dir_name(name: str) -> str:
    """A mixture name as a directory name: short and unique (a hash past 80 characters)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", name)
    return safe if len(safe) <= 80 else f"{safe[:60]}-{_key(name)}"


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None
