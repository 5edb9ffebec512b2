"""The train step of a job: after the index step, train a language model on `OUT/index` into
`OUT/train` (checkpoint/, metrics.jsonl, summary.json). Re-running the job resumes or, when the
checkpoint has reached its last step, only re-measures the validation loss."""

from __future__ import annotations

from pathlib import Path

from models.config import TrainConfig

TRAIN_DIR = "train"


def train_step(spec: TrainConfig, out_dir: Path, address: str | None, log=print) -> dict:
    """Rank 0's summary of the run (step, val_loss, checkpoint, parameters, tokens_per_s)."""
    from models.train import train  # torch: only for jobs that train

    summary = train(spec, out_dir / "index", out_dir / TRAIN_DIR, address=address, log=log)
    log(
        f"trained {spec.arch} {spec.size} to step {summary['step']}: validation loss {summary['val_loss']:.4f}; "
        f"checkpoint {summary['checkpoint']}"
    )
    return summary
