"""Ray Train data-parallel training (TorchTrainer, DDP over gloo) with 2 CPU workers against one
process with the same global batch: the same losses within float tolerance."""

from __future__ import annotations

import pytest
import ray

from models.checkpoint import load_checkpoint
from models.config import TrainConfig
from models.train import read_metrics, train
from tests.train_support import demo_index, quiet


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return demo_index(tmp_path_factory.mktemp("ray_train"))


def test_two_ray_train_workers_match_one_process(index, tmp_path):
    common = {"size": "tiny", "seq_len": 32, "batch_size": 8, "steps": 12, "warmup_steps": 2, "eval_every": 6}
    single = train(TrainConfig(**common, grad_accum=2), index, tmp_path / "one", log=quiet)
    summary = train(TrainConfig(**common, workers=2), index, tmp_path / "two", log=quiet)
    assert ray.is_initialized()
    two = [m["loss"] for m in read_metrics(tmp_path / "two") if "loss" in m]
    assert len(two) == 12 and summary["step"] == 12
    assert two == pytest.approx(single["losses"], rel=1e-4)  # all-reduce sums in another order than one process
    vals = [m["val_loss"] for m in read_metrics(tmp_path / "two") if "val_loss" in m]
    assert vals[-1] == pytest.approx(single["val_loss"], rel=1e-4)
    a, _ = load_checkpoint(tmp_path / "one")
    b, meta = load_checkpoint(tmp_path / "two")
    assert meta["step"] == 12
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert (p - q).abs().max() < 1e-4, name
