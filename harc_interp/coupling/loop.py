"""The training loop: one plain function with an injected loss and callbacks.

Deterministic given a seed: the loss function receives the step and a generator seeded from
(seed, step, micro-batch), so an interrupted run resumed from its checkpoint takes exactly the same
steps as an uninterrupted one. Writes `log.jsonl` (one row per logged step) and `checkpoint.pt`
(trainable state + optimizer state + step; read back with `torch.load(weights_only=True)`).

Data parallel: in a torch.distributed group (`accelerate launch` or `torchrun`, see
`init_distributed`), each of the W processes takes its own `grad_accumulation` micro-batches of every
step and the gradients are summed across them, so W processes take the same steps as one process with
W × `grad_accumulation` (the same seeds, in the same order); only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..artifacts import tmp_beside
from ..errors import HarcError

log = logging.getLogger(__name__)

LossFn = Callable[[int, torch.Generator], tuple[Tensor, dict[str, float]]]
Callback = Callable[[int, dict[str, float], nn.Module], bool | None]  # return True to stop


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_accumulation: int = 1
    max_grad_norm: float | None = 1.0
    checkpoint_every: int = 50
    log_every: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.lr <= 0 or self.grad_accumulation < 1 or self.checkpoint_every < 1:
            raise HarcError("steps, lr, grad_accumulation and checkpoint_every must be positive")


def world() -> tuple[int, int]:
    """(rank, world size) of this process's torch.distributed group; (0, 1) outside one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> bool:
    """Join the process group that `accelerate launch` / `torchrun` describe in the environment
    (WORLD_SIZE > 1: gloo on CPU, nccl on CUDA); False when the process runs alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    dist = torch.distributed
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def _sum_across(params: dict[str, Tensor], logs: dict[str, float]) -> dict[str, float]:
    """Sum gradients (in place) and log values over the process group."""
    dist = torch.distributed
    for p in params.values():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    keys = sorted(logs)
    values = torch.tensor([logs[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return dict(zip(keys, values.tolist(), strict=True))


def _trainable(module: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def train_loop(
    module: nn.Module,
    loss_fn: LossFn,
    config: TrainConfig,
    out_dir: str | Path,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    settings: dict | None = None,
) -> list[dict]:
    """Minimise `loss_fn` over `module`'s trainable parameters (AdamW, linear warm-up then constant).
    Resumes from `out_dir/checkpoint.pt` when present. `settings` (JSON-able: whatever shapes the loss,
    e.g. the caller's objective config) is stored with the checkpoint, and a resume under other
    settings is refused: otherwise a finished checkpoint would be returned under the new settings' name.
    Returns the log rows."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = _trainable(module)
    if not params:
        raise HarcError("the module has no trainable parameters")
    opt = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(config.warmup_steps, 1)))
    ckpt_path, log_path = out_dir / "checkpoint.pt", out_dir / "log.jsonl"
    settings = json.loads(json.dumps(settings)) if settings is not None else None
    start = 0
    if ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, weights_only=True)
        except Exception as e:
            raise HarcError(
                f"{ckpt_path} is corrupt or truncated ({e}); delete it to restart training"
            ) from None
        if ckpt.get("config") != asdict(config) or ckpt.get("settings") != settings:
            raise HarcError(f"{out_dir} holds a checkpoint of a run with other settings: use a new --out")
        missing = [n for n in params if n not in ckpt["params"]]
        if missing:
            raise HarcError(f"{ckpt_path} lacks parameters {missing[:3]}: from another model or mode")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(ckpt["params"][n])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start = int(ckpt["step"])
        log.info("resuming from step %d", start)
    rank, n_procs = world()
    writes = rank == 0  # the other processes hold the same parameters: one copy on disk
    if n_procs > 1:  # every process starts from rank 0's parameters, as DistributedDataParallel does
        with torch.no_grad():
            for p in params.values():
                torch.distributed.broadcast(p.data, src=0)
    rows = _read_log(log_path, upto=start)
    if writes:
        _write_log(log_path, rows)
    module.train()
    per_step = config.grad_accumulation * n_procs
    with tqdm(total=config.steps, initial=start, desc="training", disable=not progress or not writes) as bar:
        for step in range(start, config.steps):
            opt.zero_grad(set_to_none=True)
            logs: dict[str, float] = {}
            for micro in range(config.grad_accumulation):
                index = rank * config.grad_accumulation + micro  # this micro-batch's place in the step
                gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 101 + index)
                loss, parts = loss_fn(step, gen)
                if not torch.isfinite(loss):
                    raise HarcError(f"loss is {loss.item()} at step {step}: lower the learning rate")
                (loss / per_step).backward()
                for k, v in {"loss": float(loss.detach()), **parts}.items():
                    logs[k] = logs.get(k, 0.0) + v / per_step
            if n_procs > 1:
                logs = _sum_across(params, logs)
            if config.max_grad_norm is not None:
                logs["grad_norm"] = float(
                    torch.nn.utils.clip_grad_norm_(params.values(), config.max_grad_norm)
                )
            opt.step()
            sched.step()
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                rows.append({"step": done, "lr": sched.get_last_lr()[0], **logs})
                if writes:
                    _append_log(log_path, rows[-1])
            stop = any(cb(done, logs, module) for cb in callbacks)
            if writes and (done % config.checkpoint_every == 0 or done == config.steps or stop):
                _save_checkpoint(ckpt_path, params, opt, sched, done, config, settings)
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            if stop:
                break
    if n_procs > 1:
        torch.distributed.barrier()  # what follows may read the checkpoint rank 0 has just written
    module.eval()
    return rows


def _save_checkpoint(path: Path, params, opt, sched, step: int, config: TrainConfig, settings) -> None:
    tmp = tmp_beside(path)
    torch.save(
        {
            "params": {n: p.detach().cpu() for n, p in params.items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "step": step,
            "config": asdict(config),
            "settings": settings,
        },
        tmp,
    )
    tmp.replace(path)


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto]


def _write_log(path: Path, rows: list[dict]) -> None:
    tmp = tmp_beside(path)
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def _append_log(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
