"""Data-parallel training on Ray Train: a `TorchTrainer` starts `workers` processes (DDP; gloo on
CPU, nccl on GPU) that each run the same loop as a single process (models/train.py) on their
slice of every global batch. The paths must be visible to every worker (a local Ray, or a shared
filesystem on a cluster); rank 0 writes the checkpoints and metrics."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from curate.ray_runtime import init_ray
from models.config import TrainConfig


class DistributedTrainingError(ValueError):
    """A Ray Train run that failed; the message is the failing worker's own error."""


def train_distributed(
    cfg: TrainConfig,
    data_dir: str | Path,
    out_dir: str | Path,
    loop: Callable[..., dict],
    stop_at: int | None = None,
    address: str | None = None,
    use_gpu: bool = False,
    log: Callable[[str], None] = print,
) -> None:
    """Run `loop` (models/train.py's run_training) on `cfg.workers` Ray Train workers."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    init_ray(address)
    loop_config = {
        "loop": loop,
        "cfg": cfg.model_dump(mode="json"),
        "data_dir": str(Path(data_dir).resolve()),
        "out_dir": str(out_dir),
        "stop_at": stop_at,
    }
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu),
        run_config=RunConfig(name="train", storage_path=str(out_dir / "ray")),
    )
    log(f"Ray Train: {cfg.workers} data-parallel workers ({'nccl, GPU' if use_gpu else 'gloo, CPU'})")
    try:
        result = trainer.fit()
    except Exception as e:
        raise DistributedTrainingError(f"distributed training failed: {_root_cause(e)}") from None
    if result.error is not None:
        raise DistributedTrainingError(f"distributed training failed: {_root_cause(result.error)}")


def _worker_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    config["loop"](
        TrainConfig.model_validate(config["cfg"]),
        config["data_dir"],
        config["out_dir"],
        stop_at=config["stop_at"],
        log=print,
        rank=ctx.get_world_rank(),
        world=ctx.get_world_size(),
        device=ray.train.torch.get_device(),
        wrap=ray.train.torch.prepare_model,
    )


def _root_cause(e: BaseException) -> str:
    """The innermost error's message, without Ray's wrapping and remote tracebacks."""
    while e.__cause__ is not None or getattr(e, "cause", None) is not None:
        e = e.__cause__ or e.cause
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
