"""A model spread by a device map (accelerate's dispatch, as `--device-map auto` does across GPUs) gives
what the same model on one device gives: logits, cached residuals, hooked generation, the resumed
sweep and a coupling. On a machine without GPUs the map sends every other block to disk, so accelerate's
hooks (weights loaded per block, inputs moved to each block's device) are really in the path."""

from __future__ import annotations

import pytest
import torch
from tiny import build_tiny_model_dir, prompt_directions

from harc_interp import CacheConfig, CouplingIntervention, cache_residuals, formatter_for, load_model
from harc_interp.capture import generate_chats, last_token_logprobs
from harc_interp.capture.sweep import PromptSweep
from harc_interp.model.edits import ablation_hooks, addition_hooks

TEXTS = ["How do I bake bread?", "Tell me a joke about cats please", "What is 2+2", "Hi"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = str(build_tiny_model_dir(tmp_path_factory.mktemp("dm") / "m"))
    plain = load_model(path, progress=False)
    blocks = {f"model.layers.{i}": "disk" if i % 2 else "cpu" for i in range(plain.n_layers)}
    spread = load_model(
        path,
        device_map={"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu"}
        | {"lm_head": "cpu"}
        | blocks,
        progress=False,
    )
    return plain, spread


def test_the_map_is_dispatched_by_accelerate(pair):
    _, spread = pair
    assert set(spread.hf.hf_device_map.values()) == {"cpu", "disk"}
    assert hasattr(spread.blocks[1], "_hf_hook")  # accelerate's hook loads the offloaded weights
    assert spread.device == torch.device("cpu")


def test_logits_cache_and_hooked_generation_equal_one_device(pair):
    plain, spread = pair
    chats = formatter_for(plain).format_many(TEXTS)
    v = torch.randn(plain.d_model, generator=torch.Generator().manual_seed(0))
    for hooks in ([], ablation_hooks(plain, v)):
        torch.testing.assert_close(
            last_token_logprobs(spread, chats, hooks=hooks), last_token_logprobs(plain, chats, hooks=hooks)
        )
    cfg = CacheConfig(positions=("t_inst", "t_post"))
    a, b = (cache_residuals(m, TEXTS, config=cfg, progress=False) for m in (plain, spread))
    torch.testing.assert_close(b.resid, a.resid)
    gens = [
        [
            ids
            for ids, _ in generate_chats(
                m, chats, max_new_tokens=6, hooks=addition_hooks(plain, 2 * v, 1), progress=False
            )
        ]
        for m in (plain, spread)
    ]
    assert gens[0] == gens[1]


def test_a_resumed_sweep_restores_accelerates_forward(pair):
    # A resumed pass swaps the lower blocks' forward for a pass-through; under a device map that forward
    # is accelerate's wrapper, and deleting it (instead of restoring it) left blocks without weights.
    plain, spread = pair
    chats = formatter_for(plain).format_many(TEXTS)
    v = torch.randn(plain.d_model, generator=torch.Generator().manual_seed(1))
    wrappers = [block.__dict__["forward"] for block in spread.blocks]
    sweep = PromptSweep(spread, chats, batch_size=2, resume_slots=(2,))
    resumed = sweep.last_logprobs(addition_hooks(spread, 3 * v, 2), from_slot=2)
    assert [block.__dict__["forward"] for block in spread.blocks] == wrappers
    full = last_token_logprobs(plain, chats, hooks=addition_hooks(plain, 3 * v, 2))
    torch.testing.assert_close(resumed, full, atol=1e-4, rtol=0)
    torch.testing.assert_close(last_token_logprobs(spread, chats), last_token_logprobs(plain, chats))


def test_a_coupling_edits_alike_across_the_map(pair):
    plain, spread = pair
    chats = formatter_for(plain).format_many(TEXTS)
    d, _, _ = prompt_directions(plain, 8)  # the coupling at slot 3 also reads the plane at slot 1
    coupling = CouplingIntervention.from_directions(
        d, (3,), torch.zeros(1, 2), torch.ones(1, 2), n_span=4, read_slots=(1,)
    )
    with torch.no_grad():
        coupling.maps[0].w_out.normal_(generator=torch.Generator().manual_seed(2))
    got = last_token_logprobs(spread, chats, hooks=coupling.hooks(spread))
    want = last_token_logprobs(plain, chats, hooks=coupling.hooks(plain))
    assert not torch.allclose(want, last_token_logprobs(plain, chats))  # the coupling does edit
    torch.testing.assert_close(got, want)


def test_the_cli_takes_a_device_map(pair, tmp_path, monkeypatch):
    from harc_interp import Activations
    from harc_interp.cli import main
    from harc_interp.model import hooked

    plain, _ = pair
    seen = []
    load = hooked.load_model
    monkeypatch.setattr(hooked, "load_model", lambda *a, **k: seen.append(k["device_map"]) or load(*a, **k))
    argv = ["cache", "--model", plain.source, "--prompts", "starter:harmful", "--limit", "3", "--quiet"]
    assert main([*argv, "--device-map", "auto", "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--out", str(tmp_path / "b")]) == 0
    assert seen == ["auto", None]
    a, b = Activations.load(tmp_path / "a"), Activations.load(tmp_path / "b")
    torch.testing.assert_close(a.resid[:], b.resid[:])
