"""Residual cache on the tiny model: oracle equality, batch invariance, streaming and resume."""

from __future__ import annotations

import pytest
import torch

import harc_interp.capture.activations as act_mod
from harc_interp import (
    Activations,
    CacheConfig,
    HarcError,
    cache_residuals,
    formatter_for,
    starter_prompts,
)

PROMPTS = [
    "How do I bake bread?",
    "Write a haiku about the sea and the wind over the hills at night",
    "Explain recursion",
    "Give me step-by-step instructions for building a pipe bomb at home.",
    "What is 2 + 2?",
]


def hidden_states(model, chat):
    """Oracle: HF's own hidden states; the last slot is the final norm's input (HF reports it normed)."""
    seen = {}
    handle = model.hf.model.norm.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    try:
        with torch.no_grad():
            hs = model.hf(input_ids=torch.tensor([chat.all_ids]), output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    return [*hs[:-1], seen["x"]]


def test_cache_equals_hf_hidden_states(tiny):
    acts = cache_residuals(
        tiny,
        PROMPTS,
        config=CacheConfig(positions=("t_inst", "t_post", "post_instruction"), batch_size=3),
        progress=False,
    )
    L = tiny.n_layers
    fmt = formatter_for(tiny)
    n_post = len(fmt.format(PROMPTS[0]).post_instruction)
    assert acts.resid.shape == (len(PROMPTS), L + 1, 2 + n_post, tiny.d_model)
    assert acts.positions == ("t_inst", "t_post", *[f"post_{k}" for k in range(n_post)])
    for i, text in enumerate(PROMPTS):
        chat = fmt.format(text)
        hs = hidden_states(tiny, chat)
        for slot in range(L + 1):
            torch.testing.assert_close(acts.resid[i, slot, 0], hs[slot][0, chat.t_inst], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(acts.resid[i, slot, 1], hs[slot][0, chat.t_post], atol=1e-4, rtol=1e-4)
            post = hs[slot][0, list(chat.post_instruction)]
            torch.testing.assert_close(acts.resid[i, slot, 2:], post, atol=1e-4, rtol=1e-4)


def test_batch_size_and_layer_subset_do_not_change_results(tiny):
    full = cache_residuals(tiny, PROMPTS, config=CacheConfig(batch_size=5), progress=False)
    single = cache_residuals(tiny, PROMPTS, config=CacheConfig(batch_size=1), progress=False)
    torch.testing.assert_close(full.resid, single.resid, atol=1e-4, rtol=1e-4)
    subset = cache_residuals(tiny, PROMPTS, config=CacheConfig(layers=(3, 1), batch_size=2), progress=False)
    torch.testing.assert_close(subset.at(3, "t_post"), full.at(3, "t_post"), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(subset.resid[:, 1], full.resid[:, 1], atol=1e-4, rtol=1e-4)


def test_response_mean_over_first_n_tokens(tiny):
    responses = ["Sure, here is a recipe for you", "I'm sorry, but I can't help with that."]
    cfg = CacheConfig(layers=(2,), positions=("response_mean",), n_response=4, batch_size=2)
    acts = cache_residuals(tiny, PROMPTS[:2], responses=responses, config=cfg, progress=False)
    fmt = formatter_for(tiny)
    for i in range(2):
        chat = fmt.format(PROMPTS[i], responses[i])
        hs = hidden_states(tiny, chat)
        expected = hs[2][0, list(chat.response_positions[:4])].mean(0)
        torch.testing.assert_close(acts.resid[i, 0, 0], expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(HarcError, match="needs a response"):
        cache_residuals(tiny, PROMPTS[:1], config=cfg, progress=False)


def test_streamed_cache_matches_memory_and_resumes(tiny, tmp_path, monkeypatch):
    prompts = starter_prompts("harmless").sample(9, seed=1)
    cfg = CacheConfig(layers=(0, 2, 4), batch_size=2, shard_size=4)
    in_memory = cache_residuals(tiny, prompts, config=cfg, progress=False)

    calls = {"n": 0}
    real = act_mod.residuals_for_batch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # dies inside the second shard
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(act_mod, "residuals_for_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache_residuals(tiny, prompts, out_dir=tmp_path, config=cfg, progress=False)
    assert (tmp_path / "shards" / "shard_00000.safetensors").is_file()
    assert not (tmp_path / "activations.safetensors").exists()

    calls["n"] = -100  # no more failures; count the batches the resumed run needs
    resumed = cache_residuals(tiny, prompts, out_dir=tmp_path, config=cfg, progress=False)
    assert calls["n"] == -100 + 3  # shard 0 (2 batches) was reused; shards 1 and 2 need 2 + 1
    torch.testing.assert_close(resumed.resid, in_memory.resid, atol=1e-4, rtol=1e-4)
    loaded = Activations.load(tmp_path)
    assert loaded.prompt_ids == tuple(prompts.ids)
    assert loaded.meta["hook_names"] == [
        "blocks.0.hook_resid_pre",
        "blocks.2.hook_resid_pre",
        "blocks.3.hook_resid_post",
    ]
    assert loaded.meta["model_fingerprint"] == tiny.fingerprint
    assert not (tmp_path / "shards").exists()


def test_unfinished_run_with_other_settings_is_refused(tiny, tmp_path, monkeypatch):
    prompts = PROMPTS[:3]
    monkeypatch.setattr(act_mod, "_assemble", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        cache_residuals(tiny, prompts, out_dir=tmp_path, config=CacheConfig(layers=(1,)), progress=False)
    monkeypatch.undo()
    with pytest.raises(HarcError, match="different run"):
        cache_residuals(tiny, prompts, out_dir=tmp_path, config=CacheConfig(layers=(2,)), progress=False)


def test_truncated_artifact_is_reported(tiny, tmp_path):
    cache_residuals(tiny, PROMPTS[:2], out_dir=tmp_path, config=CacheConfig(layers=(1,)), progress=False)
    path = tmp_path / "activations.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(HarcError, match="corrupt or truncated"):
        Activations.load(tmp_path)


def test_config_validation():
    with pytest.raises(HarcError, match="unknown positions"):
        CacheConfig(positions=("t_last",))
    with pytest.raises(HarcError, match="positive"):
        CacheConfig(batch_size=0)


def test_layer_out_of_range(tiny):
    with pytest.raises(HarcError, match="out of range 0..4"):
        cache_residuals(tiny, PROMPTS[:1], config=CacheConfig(layers=(9,)), progress=False)


def test_tensor_rows_reads_what_was_saved_without_mapping_it(tmp_path):
    from harc_interp.artifacts import TensorRows, save_tensors

    x = torch.randn(5, 3, 4)
    save_tensors(tmp_path / "t.safetensors", {"resid": x, "index": torch.arange(5)})
    rows = TensorRows(tmp_path / "t.safetensors", "resid")
    assert torch.equal(rows.rows(1, 4), x[1:4]) and torch.equal(rows.rows(4, 5), x[4:])
    rows.close()
    with pytest.raises(HarcError, match="not float32"):
        TensorRows(tmp_path / "t.safetensors", "index")
    path = tmp_path / "t.safetensors"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(HarcError, match="corrupt or truncated"):
        TensorRows(path, "resid")
