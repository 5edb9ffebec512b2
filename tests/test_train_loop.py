"""The training loop on a real index of the shipped web and wiki samples: the loss falls, a stopped
and restarted run gives the uninterrupted run's losses bit for bit, and the CLI's errors are clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from curate.cli import main
from models.checkpoint import load_checkpoint
from models.config import TrainConfig
from models.train import read_metrics, train
from tests.train_support import demo_index, quiet

TINY = {"size": "tiny", "seq_len": 64, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "eval_batches": 2}


@pytest.fixture(autouse=True)
def eager_kernels(monkeypatch):
    """kernels/ compiles its CPU paths on first use (tens of seconds); these short runs measure the loop."""
    monkeypatch.setenv("CURATE_KERNELS_COMPILE", "0")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return demo_index(tmp_path_factory.mktemp("train"))


def _losses(out) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_metrics(out) if "loss" in m}


def test_tiny_model_loss_falls_within_a_minute(index, tmp_path):
    cfg = TrainConfig(**TINY, steps=40, eval_every=20)
    cpu = time.process_time()
    summary = train(cfg, index, tmp_path / "run", log=quiet)
    # CPU seconds, not wall-clock: the cores are shared with other sessions (22 s measured at load 22)
    assert time.process_time() - cpu < 60
    losses = summary["losses"]
    assert len(losses) == 40 and summary["step"] == 40
    assert sum(losses[-10:]) / 10 < losses[0] - 0.8  # from ln(2000) = 7.6 at initialisation to below 6.8
    vals = [m["val_loss"] for m in read_metrics(tmp_path / "run") if "val_loss" in m]
    assert len(vals) == 2 and vals[1] < vals[0] < losses[0]
    model, meta = load_checkpoint(tmp_path / "run")
    assert meta["step"] == 40 and meta["data"]["index"] == str(index.resolve()) and meta["tokenizer_fingerprint"]
    assert summary["tokens_per_s"] > 0


def test_swan_trains_too(index, tmp_path):
    summary = train(TrainConfig(**TINY, steps=30, optimizer="swan", eval_every=30), index, tmp_path / "swan", log=quiet)
    assert sum(summary["losses"][-5:]) / 5 < summary["losses"][0] - 0.5


def test_stopped_and_resumed_run_equals_uninterrupted_run_bit_for_bit(index, tmp_path):
    cfg = TrainConfig(**{**TINY, "batch_size": 4}, steps=16, grad_accum=2, eval_every=8, checkpoint_every=5)
    train(cfg, index, tmp_path / "whole", log=quiet)
    train(cfg, index, tmp_path / "parts", stop_at=7, log=quiet)
    assert max(_losses(tmp_path / "parts")) == 7
    logs = []
    train(cfg, index, tmp_path / "parts", log=logs.append)
    assert "resuming" in logs[0] and "at step 7" in logs[0]
    assert _losses(tmp_path / "parts") == _losses(tmp_path / "whole")  # floats compared exactly
    assert len(_losses(tmp_path / "whole")) == 16


def test_killed_cli_run_resumes_from_its_last_checkpoint(index, tmp_path):
    args = [sys.executable, "-m", "curate.cli", "train", "--data", str(index), "--out", str(tmp_path / "killed")]
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({**TINY, "steps": 5000, "checkpoint_every": 10}))
    env = {**os.environ, "CURATE_KERNELS_COMPILE": "0"}
    proc = subprocess.Popen(
        [*args, "--config", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    deadline = time.time() + 60
    while not (tmp_path / "killed" / "checkpoint").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    stopped = max(_losses(tmp_path / "killed"))
    assert 10 <= stopped < 5000, proc.stderr.read().decode()
    _, meta = load_checkpoint(tmp_path / "killed")
    resume_at = meta["step"]
    killed = ["train", "--data", str(index), "--out", str(tmp_path / "killed"), "--config", str(config)]
    assert main([*killed, "--stop-at", str(resume_at + 5)]) == 0
    cfg = TrainConfig(**TINY, steps=5000, checkpoint_every=10)
    train(cfg, index, tmp_path / "straight", stop_at=resume_at + 5, log=quiet)
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "straight")


def test_cli_errors_are_clear(index, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "index directory" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 5\nbatch: 3\n")
    assert main(["train", "--data", str(index), "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "batch: Extra inputs are not permitted" in err and str(bad) in err
    assert main(["train", "--data", str(index), "--out", str(tmp_path / "o"), "--size", "huge"]) == 2
    assert "unknown size 'huge'" in capsys.readouterr().err


def test_a_checkpoint_of_another_tokenizer_or_config_is_refused(index, tmp_path, capsys):
    other = demo_index(tmp_path, vocab=1000)
    out = tmp_path / "run"
    train(TrainConfig(**TINY, steps=2), other, out, log=quiet)
    assert main(["train", "--data", str(index), "--out", str(out), "--steps", "2"]) == 2
    assert "is not the tokenizer of index" in capsys.readouterr().err
    assert main(["train", "--data", str(other), "--out", str(out), "--steps", "3"]) == 2
    assert "another training config" in capsys.readouterr().err
