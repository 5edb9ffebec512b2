"""Checkpoints: `model.safetensors` (weights), `config.json` (architecture, config, tokenizer
fingerprint of the index trained on, data, step, seed) and, for resuming, `train_state.pt`
(optimizer state). A directory is written under a temporary name and renamed into place, so a
kill leaves either the previous checkpoint or the new one, never a mix."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from indexes.layout import read_card
from models.registry import architecture_of, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "train_state.pt"
CHECKPOINT_DIR = "checkpoint"  # inside a `curate train` output directory


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, or does not fit the data it is used with."""


def save_checkpoint(dir: str | Path, model: nn.Module, meta: dict, train_state: dict | None = None) -> Path:
    """Write the checkpoint atomically; `meta` adds to config.json (tokenizer_fingerprint, data,
    step, seed, ...); `train_state` (optimizer states, step) is what resuming needs."""
    dir = Path(dir)
    model = getattr(model, "module", model)  # unwrap DDP
    tmp = dir.with_name(f".{dir.name}.writing")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / WEIGHTS))
    config = {"architecture": architecture_of(model), "config": dataclasses.asdict(model.config), **meta}
    (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if train_state is not None:
        torch.save(train_state, tmp / TRAIN_STATE)
    old = dir.with_name(f".{dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dir.exists():
        os.replace(dir, old)
    os.replace(tmp, dir)
    shutil.rmtree(old, ignore_errors=True)
    return dir


def checkpoint_dir(dir: str | Path) -> Path:
    """A checkpoint directory, or a `curate train` output directory holding one."""
    dir = Path(dir)
    if (dir / CONFIG).is_file():
        return dir
    if (dir / CHECKPOINT_DIR / CONFIG).is_file():
        return dir / CHECKPOINT_DIR
    if not dir.exists():
        raise CheckpointError(f"checkpoint {dir} does not exist")
    raise CheckpointError(f"{dir} is not a checkpoint: no {CONFIG} in it or in {dir / CHECKPOINT_DIR}")


def read_meta(dir: str | Path) -> dict:
    """config.json of a checkpoint (or of a training output's checkpoint)."""
    path = checkpoint_dir(dir) / CONFIG
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not JSON: {e}") from None


def load_checkpoint(dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The model (eval mode, on `device`) and its config.json."""
    dir = checkpoint_dir(dir)
    meta = read_meta(dir)
    for key in ("architecture", "config"):
        if key not in meta:
            raise CheckpointError(f"{dir / CONFIG}: no `{key}`")
    model = build_model(meta["architecture"], meta["config"])
    if not (dir / WEIGHTS).is_file():
        raise CheckpointError(f"{dir / WEIGHTS} is missing")
    load_model(model, str(dir / WEIGHTS), device=str(device))
    return model.to(device).eval(), meta


def load_train_state(dir: str | Path) -> dict:
    path = checkpoint_dir(dir) / TRAIN_STATE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint cannot resume training")
    return torch.load(path, map_location="cpu", weights_only=False)


def check_tokenizer(meta: dict, index_dir: str | Path) -> None:
    """Raise unless the checkpoint was trained with the index's tokenizer (same fingerprint, or,
    for an index without a tokenizer, the same vocabulary size)."""
    card = read_card(Path(index_dir))
    ours, theirs = meta.get("tokenizer_fingerprint"), card.get("tokenizer_fingerprint")
    if ours != theirs:
        raise CheckpointError(
            f"the checkpoint's tokenizer (fingerprint {ours}) is not the tokenizer of index {index_dir} "
            f"(fingerprint {theirs})"
        )
    vocab = meta.get("config", {}).get("vocab_size")
    if vocab is not None and vocab < card["vocab_size"]:
        raise CheckpointError(
            f"the checkpoint's vocabulary ({vocab}) is smaller than index {index_dir}'s ({card['vocab_size']})"
        )
