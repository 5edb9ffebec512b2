"""The papers' architectures (models/based.py, jrt.py, h3.py, block.py, ngram.py): gradients respect
causality, JRT's prefix mode is non-causal inside its prefix only, recurrent generation equals the
parallel form (Based, JRT-RNN, H3), and a tiny model of each learns on the demo shards and is scored
by `curate eval`. The output-side causality check and the loss contract run for every registered
architecture in tests/test_train_model.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import models.h3
from curate.cli import main
from kernels import fft_conv
from models.config import TrainConfig
from models.ngram import ngram_matches
from models.registry import ARCHITECTURES, build_model, count_parameters, model_configs
from models.train import train
from tests.train_support import assert_causal, demo_index, quiet

VOCAB = 53


def tiny(arch: str, seq_len: int, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, {**model_configs(arch)["tiny"], "vocab_size": VOCAB, "seq_len": seq_len, **overrides})


def tokens(batch: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, T), generator=torch.Generator().manual_seed(seed))


def embedding_grads(model: nn.Module, idx: torch.Tensor, position: int, **kwargs) -> list[torch.Tensor]:
    """d(logits at `position`, randomly weighted)/d(every embedding lookup), each (B, T', width)."""
    looked_up: list[torch.Tensor] = []

    def keep(_module, _inputs, out):
        out.retain_grad()
        looked_up.append(out)

    hooks = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, nn.Embedding)]
    try:
        logits = model(idx, **kwargs)
        weights = torch.randn(logits.shape[0], logits.shape[-1], generator=torch.Generator().manual_seed(position))
        (logits[:, position] * weights).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    assert looked_up
    return [e.grad if e.grad is not None else torch.zeros_like(e) for e in looked_up]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_no_gradient_flows_from_a_later_token_to_an_earlier_output(arch):
    T = 12
    model = tiny(arch, T)
    idx = tokens(2, T)
    tolerance = getattr(model, "causal_tolerance", 0.0)  # 0: exactly no gradient; H3: FFT rounding
    for t in range(T):
        seen = torch.zeros(T, dtype=torch.bool)  # positions whose lookups reach output t
        for g in embedding_grads(model, idx, t):
            later = g[:, t + 1 :]  # JRT's causal pass looks up fewer positions, Block pads its last block
            if later.numel():
                assert later.abs().max() <= tolerance * g.abs().max(), f"{arch}: output {t}: a later token's gradient"
            seen[: g.shape[1]] |= g[:, :T].abs().amax(dim=(0, 2)) > 0
        assert seen[: t + 1].all(), f"{arch}: output {t} has no gradient from some earlier token"


def test_jrt_prefix_mode_reads_the_prefix_both_ways_and_the_rest_causally():
    T, P = 20, 8
    model = tiny("jrt", T).eval()
    idx = tokens(2, T)
    with torch.no_grad():
        base = model(idx, prefix_len=P)
        for j in range(1, T):  # token j; outputs before it
            changed = idx.clone()
            changed[:, j] = (idx[:, j] + 1) % VOCAB
            out = model(changed, prefix_len=P)
            assert torch.equal(out[:, :j], base[:, :j]) == (j >= P), f"token {j}: wrong reach into earlier outputs"
            assert not torch.allclose(out[:, j:], base[:, j:])
        # the language-model call is the prefix mode from P - 1 on, and a causal pass before it
        lm = model(idx)
        assert torch.equal(lm[:, P - 1 :], base[:, P - 1 :])
        assert torch.equal(lm[:, : P - 1], model(idx[:, : P - 1], prefix_len=0))
    with pytest.raises(ValueError, match="prefix_len must be between 0 and the sequence length 20"):
        model(idx, prefix_len=21)


def test_jrt_prefix_gradients_stay_inside_the_prefix():
    T, P = 16, 6
    model = tiny("jrt", T)
    idx = tokens(2, T)
    for t in range(T):
        (g,) = [g for g in embedding_grads(model, idx, t, prefix_len=P) if g.shape[1] == T]
        reach = g.abs().amax(dim=(0, 2)) > 0
        expected = torch.arange(T) <= max(t, P - 1)  # the whole prefix, and nothing after t
        assert torch.equal(reach, expected), f"output {t}: gradient reach {reach.tolist()}"


def step_through(model: nn.Module, idx: torch.Tensor, start: int = 0, states=None) -> torch.Tensor:
    out = []
    for pos in range(start, idx.shape[1]):
        logits, states = model.step(idx[:, pos], states, pos)
        out.append(logits)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("arch", ["based", "h3"])
def test_recurrent_generation_equals_the_parallel_form(arch):
    T = 40  # longer than Based's tiny window (16): the KV cache drops old tokens
    model = tiny(arch, T).eval()
    idx = tokens(2, T)
    with torch.no_grad():
        parallel = model(idx).softmax(-1)
        recurrent = step_through(model, idx).softmax(-1)
    assert recurrent.shape == parallel.shape == (2, T, VOCAB)
    torch.testing.assert_close(recurrent, parallel, atol=1e-5, rtol=1e-4)


def test_jrt_read_twice_then_recurrent_steps_equal_the_prefix_mode():
    T, P = 30, 10
    model = tiny("jrt", T).eval()
    idx = tokens(2, T)
    with torch.no_grad():
        parallel = model(idx, prefix_len=P).softmax(-1)
        first, states = model.read_twice(idx[:, :P])
        rest = step_through(model, idx, start=P, states=states)
    recurrent = torch.cat([first[:, None], rest], dim=1).softmax(-1)  # predictions after positions P-1 .. T-1
    torch.testing.assert_close(recurrent, parallel[:, P - 1 :], atol=1e-5, rtol=1e-4)


def test_the_h3_causality_check_catches_an_unpadded_fft(monkeypatch):
    """The tolerance H3's causality checks allow is float rounding, far below a real leak."""

    def circular(u, k, D=None):  # the leak of reference/architectures.md's pitfall: no zero-padding
        L = u.shape[-1]
        y = torch.fft.irfft(torch.fft.rfft(u, n=L) * torch.fft.rfft(k, n=L), n=L)
        return y + D[:, None] * u

    assert_causal("h3")
    monkeypatch.setattr(models.h3, "fft_conv", circular)
    with pytest.raises(AssertionError, match="saw a later token"):
        assert_causal("h3")
    monkeypatch.setattr(models.h3, "fft_conv", fft_conv)


def test_ngram_matches_by_hand():
    idx = torch.tensor([[5, 6, 5, 6, 5]])
    unigram = ngram_matches(idx, 1)[0]
    # query 4 (token 5) matches keys 0 and 2 (token 5): it attends to the tokens after them, 1 and 3
    assert unigram[4].tolist() == [0, 0.5, 0, 0.5, 0]
    bigram = ngram_matches(idx, 2)[0]
    # "6 5" ends at 2 and at 4: query 4 attends to 3 only; query 2's only earlier "6 5" is itself
    assert bigram[4].tolist() == [0, 0, 0, 1, 0] and bigram[2].sum() == 0
    assert bigram[1].sum() == 0 and unigram[0].sum() == 0  # no earlier occurrence: a zero row


def test_configs_reject_bad_values_by_name():
    with pytest.raises(ValueError, match="pattern 'lx'"):
        build_model("based", {"pattern": "lx"})
    with pytest.raises(ValueError, match=r"attn_layers \[5\]"):
        build_model("h3", {"n_layer": 2, "attn_layers": [5]})
    with pytest.raises(ValueError, match="multiple of block_len"):
        build_model("block", {"n_embd": 66, "n_head": 3, "block_len": 4})
    with pytest.raises(ValueError, match="ngram_orders"):
        build_model("based+ngram", {**model_configs("based")["tiny"], "ngram_orders": []})
    with pytest.raises(ValueError, match="unknown h3 config key.*window"):
        build_model("h3", {"window": 8})


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return demo_index(tmp_path_factory.mktemp("arch"), docs_per_file=60)


@pytest.mark.parametrize("arch", ["based", "jrt", "h3", "block", "transformer+ngram"])
def test_tiny_model_learns_on_the_demo_shards_and_curate_eval_scores_it(arch, index, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CURATE_KERNELS_COMPILE", "0")
    cfg = TrainConfig(
        arch=arch,
        size="tiny",
        seq_len=64,
        batch_size=8,
        lr=3e-3,
        warmup_steps=5,
        steps=30,
        eval_every=30,
        checkpoint_every=30,
        log_every=30,
    )
    losses = train(cfg, index, tmp_path / "run", log=quiet)["losses"]
    assert len(losses) == 30 and sum(losses[-5:]) / 5 < losses[0] - 0.5, losses
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--data", str(index), "--max-docs", "12", "--json"]) == 0
    overall = json.loads(capsys.readouterr().out)["overall"]
    assert overall["docs"] > 0 and overall["loss"] < math.log(2000) - 0.3 and 0 < overall["bits_per_byte"] < 10


@pytest.mark.parametrize("arch", ["based", "jrt", "h3", "block", "transformer+ngram"])
def test_named_sizes_grow_to_about_125m(arch):
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        counts = {
            name: count_parameters(build_model(arch, {**cfg, "vocab_size": 32000}))
            for name, cfg in model_configs(arch).items()
        }
    assert list(counts) == ["tiny", "small", "mini", "125m"]
    assert sorted(counts.values()) == list(counts.values())
    assert 100e6 < counts["125m"] < 135e6, counts
