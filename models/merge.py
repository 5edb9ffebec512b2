"""Parameter averaging of checkpoints (Na et al. 2024, "Scalable Data Ablation Approximations"):
the average of models trained on separate partitions stands in for a model trained on their union.

- micro-merge: the (weighted) average of partition models;
- macro-merge: the average of already merged models (e.g. one merge per source, then the merges);
- weights: a weighted mixture gives each part its weight (normalised to sum to 1).

Floating-point tensors are averaged in float64 and cast back to their dtype; integer tensors
(none in the transformer, but buffers may be) must agree across parts and are copied. The result
is an ordinary checkpoint (models/checkpoint.py) that `curate eval` and `curate generate` read."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.registry import architecture_of, build_model


def average_state_dicts(states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float] | None = None) -> dict:
    """The weighted mean of state dicts with the same keys and shapes (uniform without weights)."""
    if not states:
        raise ValueError("nothing to average: no models given")
    weights = [1.0] * len(states) if weights is None else [float(w) for w in weights]
    if len(weights) != len(states):
        raise ValueError(f"{len(weights)} weights for {len(states)} models")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    total = sum(weights)
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            raise ValueError(f"model {i} has other parameters than model 0: {sorted(set(state) ^ set(keys))}")
    merged = {}
    for key in keys:
        first = states[0][key]
        shapes = {tuple(s[key].shape) for s in states}
        if len(shapes) > 1:
            raise ValueError(f"parameter {key} has different shapes across models: {sorted(shapes)}")
        if first.is_floating_point():
            acc = torch.zeros(first.shape, dtype=torch.float64)
            for state, w in zip(states, weights):
                acc += state[key].detach().to("cpu", torch.float64) * (w / total)
            merged[key] = acc.to(first.dtype)
        else:
            if any(not torch.equal(s[key].cpu(), first.cpu()) for s in states[1:]):
                raise ValueError(f"integer tensor {key} differs across models and cannot be averaged")
            merged[key] = first.detach().cpu().clone()
    return merged


def merge_models(parts: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    """A model of the first part's architecture holding the weighted average of the parts."""
    merged = average_state_dicts([p.state_dict() for p in parts], weights)
    model = build_model(architecture_of(parts[0]), dataclasses.asdict(parts[0].config))
    model.load_state_dict(merged)
    return model.eval()


def merge_checkpoints(
    dirs: Sequence[str | Path], out_dir: str | Path, weights: Sequence[float] | None = None, meta: dict | None = None
) -> Path:
    """Micro-merge: save the weighted average of checkpoints as a checkpoint. Parts must share the
    architecture, its config and the tokenizer; config.json records the parts and the weights."""
    loaded = [load_checkpoint(d) for d in dirs]
    metas = [m for _, m in loaded]
    for key in ("architecture", "config", "tokenizer_fingerprint"):
        values = {str(m.get(key)) for m in metas}
        if len(values) > 1:
            raise CheckpointError(f"cannot merge checkpoints with different `{key}`: {', '.join(map(str, dirs))}")
    model = merge_models([m for m, _ in loaded], weights)
    norm = _normalised(weights, len(dirs))
    record = {
        "tokenizer_fingerprint": metas[0].get("tokenizer_fingerprint"),
        "data": metas[0].get("data"),
        "step": None,
        "merge": {"kind": "average", "parts": [str(d) for d in dirs], "weights": norm},
        **(meta or {}),
    }
    return save_checkpoint(out_dir, model, record)


def macro_merge(groups: Sequence[Sequence[str | Path]], out_dir: str | Path, meta: dict | None = None) -> Path:
    """Macro-merge: the uniform average of the groups' uniform averages. It equals a micro-merge
    whose part weights are 1 / (groups x size of its group), computed here in one pass."""
    if not groups or any(not g for g in groups):
        raise ValueError("a macro-merge needs non-empty groups")
    dirs = [d for g in groups for d in g]
    weights = [1.0 / (len(groups) * len(g)) for g in groups for _ in g]
    record = {"macro": [[str(d) for d in g] for g in groups], **(meta or {})}
    return merge_checkpoints(dirs, out_dir, weights, record)


def _normalised(weights: Sequence[float] | None, n: int) -> list[float]:
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    total = sum(weights)
    return [w / total for w in weights]
