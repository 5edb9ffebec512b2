"""The training loop, one function for one process and for each Ray Train worker.

Output directory: `checkpoint/` (the latest checkpoint, replaced atomically every
`checkpoint_every` steps and at the end) and `metrics.jsonl` (one line per step: loss, lr,
gradient norm, tokens; `val_loss` lines at each validation). A run whose output already holds a
checkpoint of the same training config and data resumes from it: the data order is a function
of the step and the optimizer state is restored, so the resumed losses equal an uninterrupted
run's bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_model

from models.checkpoint import (
    CHECKPOINT_DIR,
    WEIGHTS,
    CheckpointError,
    check_tokenizer,
    checkpoint_dir,
    load_train_state,
    read_meta,
    save_checkpoint,
)
from models.config import TrainConfig
from models.data import TokenShards, batches
from models.optim import build_optimizers, lr_at
from models.registry import build_model, count_parameters

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"  # the last session's summary, written by rank 0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for but torch sees no GPU")
    return torch.device(name)


def train(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    stop_at: int | None = None,
    address: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train in this process, or on `cfg.workers` Ray Train workers (local Ray or `address`)."""
    if not Path(data_dir).is_dir():
        raise FileNotFoundError(
            f"index directory {data_dir} does not exist (build it with `curate index build` or a job's index step)"
        )
    if cfg.workers > 1:
        from models.distributed import train_distributed

        use_gpu = pick_device(cfg.device).type == "cuda"
        train_distributed(cfg, data_dir, out_dir, run_training, stop_at, address, use_gpu, log)
        return json.loads((Path(out_dir) / SUMMARY).read_text())  # rank 0's
    return run_training(cfg, data_dir, out_dir, stop_at, log)


def run_training(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    stop_at: int | None = None,
    log: Callable[[str], None] = print,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    init_from: str | Path | None = None,
) -> dict:
    """Train (or resume) up to step `stop_at` (default: cfg.steps) and return a summary.
    `wrap` (Ray Train's prepare_model) makes the model data-parallel over `world` ranks.
    `init_from`: a checkpoint whose weights start a fresh run (continued pre-training, with a fresh
    optimizer); a run that resumes from its own checkpoint ignores it."""
    shards = TokenShards(data_dir)
    out_dir = Path(out_dir)
    device = device or pick_device(cfg.device)
    main = rank == 0
    torch.manual_seed(cfg.seed)
    raw = build_model(cfg.arch, cfg.architecture_config(shards.vocab_size))
    meta = {
        "tokenizer_fingerprint": shards.tokenizer_fingerprint,
        "data": {"index": str(Path(data_dir).resolve()), "card_hash": shards.card_hash},
        "seed": cfg.seed,
        "train": cfg.model_dump(mode="json"),
        "run_hash": cfg.run_hash(),
    }
    if init_from is not None:
        meta["init_from"] = str(init_from)
    start, optimizer_states = _resume(out_dir, raw, meta, data_dir, log if main else _quiet)
    if init_from is not None and start == 0:
        check_tokenizer(read_meta(init_from), data_dir)
        load_model(raw, str(checkpoint_dir(init_from) / WEIGHTS))
    raw.to(device)
    optimizers = build_optimizers(raw, cfg)
    for opt, opt_state in zip(optimizers, optimizer_states or [], strict=optimizer_states is not None):
        opt.load_state_dict(opt_state)  # moves the state to its parameters' device
    end = min(stop_at or cfg.steps, cfg.steps)
    if main:
        _truncate_metrics(out_dir / METRICS, start)
        log(
            f"{cfg.arch} {cfg.size}: {count_parameters(raw):,} parameters; {shards.vocab_size:,} vocabulary; "
            f"steps {start}..{end} of {cfg.steps}; {cfg.batch_size} x {cfg.seq_len} tokens per step; "
            f"{world} worker(s) on {device}"
        )
    model = wrap(raw) if wrap else raw
    step_fn = torch.compile(model) if cfg.compile else model
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    train_iter = batches(shards, "train", cfg.seq_len, cfg.micro_batch, cfg.seed, start * cfg.grad_accum, rank, world)
    # the same validation windows whatever the number of workers: eval_batches global batches
    val_iter = batches(shards, "val", cfg.seq_len, cfg.batch_size // world, cfg.seed, 0, rank, world)
    val = list(islice(val_iter, cfg.eval_batches))
    tokens_per_step = cfg.batch_size * cfg.seq_len
    losses, val_loss, t0, step = [], None, time.perf_counter(), start
    metrics = open(out_dir / METRICS, "a") if main else None
    try:
        while step < end:
            lr = lr_at(step, cfg)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr
            total = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum):
                x, y = (t.to(device, non_blocking=True) for t in next(train_iter))
                sync = micro == cfg.grad_accum - 1 or not hasattr(model, "no_sync")
                with contextlib.nullcontext() if sync else model.no_sync(), autocast:
                    loss = step_fn(x, y) / cfg.grad_accum
                loss.backward()
                total += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip or float("inf"))
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
            step += 1
            loss_value = _mean_over_ranks(total, world)
            losses.append(loss_value)
            if main:
                record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm)}
                _write(metrics, {**record, "tokens": step * tokens_per_step})
            if step % cfg.eval_every == 0 or step == end:
                val_loss = _validate(raw, val, cfg.micro_batch, device, world)
                if main:
                    _write(metrics, {"step": step, "val_loss": val_loss})
            if main and (step % cfg.log_every == 0 or step == end):
                rate = (step - start) * tokens_per_step / (time.perf_counter() - t0)
                eta = (end - step) * tokens_per_step / rate
                val_text = f" val {val_loss:.4f}" if val_loss is not None else ""
                log(
                    f"step {step}/{cfg.steps} loss {loss_value:.4f}{val_text} lr {lr:.2e} {rate:,.0f} tok/s "
                    f"ETA {_duration(eta)}"
                )
            if step % cfg.checkpoint_every == 0 or step == end:
                if main:
                    train_state = {"step": step, "optimizers": [opt.state_dict() for opt in optimizers]}
                    save_checkpoint(out_dir / CHECKPOINT_DIR, raw, {**meta, "step": step}, train_state)
                if world > 1:
                    dist.barrier()
    finally:
        if metrics:
            metrics.close()
    seconds = time.perf_counter() - t0
    if val_loss is None:  # nothing left to train (a finished run started again)
        val_loss = _validate(raw, val, cfg.micro_batch, device, world)
    summary = {
        "out": str(out_dir),
        "checkpoint": str(out_dir / CHECKPOINT_DIR),
        "step": step,
        "parameters": count_parameters(raw),
        "losses": losses,
        "val_loss": val_loss,
        "tokens_per_s": (step - start) * tokens_per_step / seconds if step > start else None,
    }
    if main:
        tmp = out_dir / f".{SUMMARY}.tmp"
        tmp.write_text(json.dumps(summary) + "\n")
        os.replace(tmp, out_dir / SUMMARY)
    return summary


def _resume(out_dir: Path, model: torch.nn.Module, meta: dict, data_dir, log) -> tuple[int, list | None]:
    """Load the output's checkpoint into the model when there is one; its step and optimizer states."""
    ckpt = out_dir / CHECKPOINT_DIR
    previous = ckpt.with_name(f".{ckpt.name}.old")
    if not ckpt.exists() and previous.exists():  # killed between save_checkpoint's two renames
        previous.rename(ckpt)
    if not ckpt.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        return 0, None
    old = read_meta(ckpt)
    check_tokenizer(old, data_dir)
    if old.get("data", {}).get("card_hash") != meta["data"]["card_hash"]:
        raise CheckpointError(f"{ckpt} was trained on other data (index card {old.get('data')}); use a new --out")
    if old.get("run_hash") != meta["run_hash"]:
        raise CheckpointError(f"{ckpt} was trained with another training config; use a new --out (or that config)")
    state = load_train_state(ckpt)
    load_model(model, str(ckpt / WEIGHTS))
    log(f"resuming from {ckpt} at step {state['step']}")
    return int(state["step"]), state["optimizers"]


@torch.no_grad()
def _validate(model: torch.nn.Module, val: list, micro_batch: int, device: torch.device, world: int) -> float:
    """Mean loss over the fixed validation batches (all ranks together)."""
    model.eval()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    total = torch.zeros((), device=device)
    chunks = [(xc, yc) for x, y in val for xc, yc in zip(x.split(micro_batch), y.split(micro_batch))]
    for x, y in chunks:
        with autocast:
            total += model(x.to(device), y.to(device)).float()
    model.train()
    return _mean_over_ranks(total / len(chunks), world)


def _mean_over_ranks(value: torch.Tensor, world: int) -> float:
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return float(value)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past the checkpoint being resumed (a killed run may have written some)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))


def _write(f, record: dict) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()


def read_metrics(out_dir: str | Path) -> list[dict]:
    """The metric lines of a training output, in order."""
    path = Path(out_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _quiet(_: str) -> None:
    pass
