"""Data-parallel training: two CPU processes in a gloo group (the environment `torchrun` or
`accelerate launch` sets) train a training-time baseline to the same adapter as one process that
accumulates both processes' micro-batches."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import torch
from safetensors.torch import load_file

WORKER = """
import sys
from harc_interp import load_model, starter_prompts
from harc_interp.baselines.training import TrainingBaselineConfig, train_baseline
from harc_interp.coupling.loop import TrainConfig, init_distributed, world

model_dir, out, accumulation, expect_world = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
assert init_distributed() == (expect_world > 1) and world()[1] == expect_world
sets = {
    "harmful": starter_prompts("harmful").sample(6, seed=0),
    "harmless": starter_prompts("harmless").sample(4, seed=0),
    "borderline": starter_prompts("borderline").sample(2, seed=0),
}
config = TrainingBaselineConfig(
    r=4, alpha=8, n_response=4, n_unsafe=2, n_safe=2,
    train=TrainConfig(steps=3, lr=1e-2, grad_accumulation=accumulation, log_every=1, checkpoint_every=3),
)
train_baseline(load_model(model_dir), "sft", sets, out, config, progress=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script, tiny_dir, out, accumulation: int, n_procs: int) -> dict[str, torch.Tensor]:
    port = _free_port()
    procs = []
    for rank in range(n_procs):
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        if n_procs > 1:
            env |= {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n_procs)}
            env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        else:
            env.pop("WORLD_SIZE", None)
        args = [sys.executable, str(script), str(tiny_dir), str(out), str(accumulation), str(n_procs)]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-3000:]
    return load_file(out / "adapter" / "adapter_model.safetensors")


def test_two_processes_train_the_adapter_one_process_accumulating_both_would(tiny_dir, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    parallel = _launch(script, tiny_dir, tmp_path / "two", accumulation=1, n_procs=2)
    alone = _launch(script, tiny_dir, tmp_path / "one", accumulation=2, n_procs=1)
    half = _launch(script, tiny_dir, tmp_path / "half", accumulation=1, n_procs=1)
    assert parallel.keys() == alone.keys() and parallel
    for name in parallel:
        torch.testing.assert_close(parallel[name], alone[name], atol=1e-6, rtol=1e-5)
    # one process's micro-batch alone trains another adapter: the second process's share counted
    assert any(not torch.allclose(parallel[n], half[n], atol=1e-6) for n in parallel)
    assert not list((tmp_path / "two").rglob("*.tmp"))  # no write left half-done by either process
