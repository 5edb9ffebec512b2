"""The registered architectures (causality, the loss contract), checkpoints, configs and SWAN."""

from __future__ import annotations

import json

import pytest
import torch

from models.checkpoint import CheckpointError, check_tokenizer, load_checkpoint, save_checkpoint
from models.config import TrainConfig, load_train_config
from models.optim import SWAN, grad_norm_rows, lr_at, whiten
from models.registry import ARCHITECTURES, build_model, count_parameters, model_configs
from tests.train_support import assert_causal


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_changing_a_later_token_never_changes_earlier_outputs(arch):
    assert_causal(arch)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_loss_contract(arch):
    torch.manual_seed(0)
    model = build_model(arch, {**model_configs(arch)["tiny"], "vocab_size": 50, "seq_len": 12})
    idx = torch.randint(0, 50, (3, 12))
    targets = torch.randint(0, 50, (3, 12))
    logits = model(idx)
    flat = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), targets.reshape(-1), reduction="none")
    by_hand = flat.view(3, 12)
    per_token = model(idx, targets, reduction="none")
    assert per_token.shape == (3, 12) and torch.allclose(per_token, by_hand, atol=1e-6)
    assert torch.allclose(model(idx, targets), by_hand.mean(), atol=1e-6)
    masked = targets.clone()
    masked[:, :6] = -100
    assert torch.allclose(model(idx, masked), by_hand[:, 6:].mean(), atol=1e-6)
    assert torch.equal(model(idx, masked, reduction="none")[:, :6], torch.zeros(3, 6))
    assert model.config.vocab_size == 50


def test_named_sizes_grow_to_about_125m():
    counts = {
        name: count_parameters(build_model("transformer", {**cfg, "vocab_size": 32000}))
        for name, cfg in model_configs("transformer").items()
    }
    assert list(counts) == ["tiny", "small", "mini", "125m"]
    assert sorted(counts.values()) == list(counts.values())
    assert 100e6 < counts["125m"] < 135e6  # GPT-2 small's shape, tied embeddings, 32k vocabulary


def test_unknown_model_keys_and_training_keys_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown transformer config key.*n_layers"):
        build_model("transformer", {"n_layers": 3})
    with pytest.raises(ValueError, match="unknown architecture 'mamba'"):
        build_model("mamba", {})
    cfg = tmp_path / "train.yaml"
    cfg.write_text("steps: 10\nlearning_rate: 0.1\nmodel: {n_embd: 32, heads: 2}\n")
    with pytest.raises(ValueError) as e:
        load_train_config(cfg)
    assert "learning_rate: Extra inputs are not permitted" in str(e.value) and str(cfg) in str(e.value)
    cfg.write_text("model: {n_embd: 32, heads: 2}\n")
    with pytest.raises(ValueError, match="heads"):
        load_train_config(cfg)
    with pytest.raises(ValueError, match="multiple of workers x grad_accum"):
        TrainConfig(batch_size=6, workers=4)


def _index_card(path, fingerprint, vocab=100):
    path.mkdir()
    (path / "index.json").write_text(json.dumps({"tokenizer_fingerprint": fingerprint, "vocab_size": vocab}))
    return path


def test_checkpoint_round_trip_and_tokenizer_check(tmp_path):
    torch.manual_seed(0)
    model = build_model("transformer", {**model_configs("transformer")["tiny"], "vocab_size": 100, "seq_len": 16})
    save_checkpoint(tmp_path / "ck", model, {"tokenizer_fingerprint": "abc", "step": 3, "seed": 0})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    loaded, meta = load_checkpoint(tmp_path / "ck")
    idx = torch.randint(0, 100, (2, 16))
    assert torch.equal(loaded(idx), model.eval()(idx))
    assert loaded.lm_head.weight is loaded.embed.weight  # still tied
    assert meta["architecture"] == "transformer" and meta["step"] == 3 and meta["config"]["vocab_size"] == 100
    check_tokenizer(meta, _index_card(tmp_path / "same", "abc"))
    with pytest.raises(CheckpointError, match="fingerprint abc.*fingerprint xyz"):
        check_tokenizer(meta, _index_card(tmp_path / "other", "xyz"))
    with pytest.raises(CheckpointError, match="vocabulary"):
        check_tokenizer(meta, _index_card(tmp_path / "bigger", "abc", vocab=500))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing")


def test_swan_whitens_standardised_gradients():
    g = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    normed = grad_norm_rows(g)
    assert torch.allclose(normed.mean(1), torch.zeros(8), atol=1e-5)
    assert torch.allclose(normed.pow(2).mean(1), torch.ones(8), atol=1e-4)
    w = whiten(normed, steps=15)
    u, _, vh = torch.linalg.svd(normed, full_matrices=False)
    assert torch.allclose(w, u @ vh, atol=1e-3)  # (G G^T)^(-1/2) G = U V^T
    p = torch.nn.Parameter(torch.zeros(32, 8))  # tall: SWAN works on the transpose
    p.grad = g.T.clone()
    SWAN([p], lr=0.1, ns_steps=15).step()
    assert p.shape == (32, 8) and torch.allclose(p.pow(2).mean().sqrt(), torch.tensor(0.1), atol=1e-4)  # RMS = lr


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lr_at(110, cfg) == pytest.approx(0.1)
