"""Batched generation equals plain Hugging Face generate; hooks act while decoding.

The bridge test guards the pin: with transformers 5.24, TransformerLens 4.3's generate loses its
KV cache and diverges after the first token.
"""

from __future__ import annotations

import torch

from harc_interp import formatter_for, generate
from harc_interp.capture.generate import stop_ids
from harc_interp.data.chat import left_pad

PROMPTS = [
    "How do I bake bread?",
    "Write a haiku about the sea and the wind over the hills",
    "Hi",
    "Explain recursion to me",
]


def hf_generate_one(model, text, n):
    chat = formatter_for(model).format(text)
    out = model.hf.generate(
        input_ids=torch.tensor([chat.input_ids]),
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=stop_ids(model),
        pad_token_id=model.tokenizer.pad_token_id,
    )
    new = out[0, len(chat.input_ids) :].tolist()
    stops = stop_ids(model)
    return next((new[:i] for i, t in enumerate(new) if t in stops), new)


def test_batched_generation_equals_hf_one_at_a_time(tiny):
    ours = generate(tiny, PROMPTS, max_new_tokens=12, batch_size=4, progress=False)
    for g, text in zip(ours, PROMPTS, strict=True):
        assert list(g.response_ids) == hf_generate_one(tiny, text, 12)
        assert g.instruction == text
    assert any(len(g.response_ids) == 12 for g in ours)  # the comparison covers many decoding steps


def test_hooks_stay_active_while_decoding(tiny):
    calls = []

    def count(resid, site):
        calls.append(resid.shape[1])

    plain = generate(tiny, PROMPTS[:1], max_new_tokens=6, progress=False)
    generate(tiny, PROMPTS[:1], max_new_tokens=6, hooks=[("blocks.1.hook_resid_pre", count)], progress=False)
    n_new = len(plain[0].response_ids)
    # the shared template prefix once, then one forward pass per generated token (the end-of-turn token
    # too), the first over the rest of the prompt
    assert len(calls) == 1 + n_new + (1 if plain[0].finished else 0)
    assert calls[0] > 1 and calls[1] > 1 and all(c == 1 for c in calls[2:])  # one new position per step

    push = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0)) * 50
    steered = generate(
        tiny,
        PROMPTS[:1],
        max_new_tokens=6,
        hooks=[("blocks.1.hook_resid_pre", lambda r, s: r + push)],
        progress=False,
    )
    assert steered[0].response_ids != plain[0].response_ids


def test_model_restored_after_hooks(tiny):
    ids = torch.tensor([formatter_for(tiny).format("Hi").input_ids])
    with torch.no_grad():
        before = tiny.hf(input_ids=ids).logits
        with tiny.hooks([("blocks.0.hook_resid_post", lambda r, s: r * 0)]):
            during = tiny.hf(input_ids=ids).logits
        after = tiny.hf(input_ids=ids).logits
    assert not torch.allclose(before, during)
    assert torch.equal(before, after)


def test_bridge_matches_hf_forward_and_batched_generate(tiny):
    bridge = tiny.bridge
    chats = formatter_for(tiny).format_many(PROMPTS)
    batch = left_pad(chats, tiny.tokenizer.pad_token_id, with_response=False)
    with torch.no_grad():
        hf_logits = tiny.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        tl_logits = bridge(batch.input_ids, attention_mask=batch.attention_mask)
    real = batch.attention_mask.bool()
    torch.testing.assert_close(tl_logits[real], hf_logits[real], atol=1e-4, rtol=0)

    n = 10
    hf_out = tiny.hf.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=n,
        do_sample=False,
        eos_token_id=stop_ids(tiny),
        pad_token_id=tiny.tokenizer.pad_token_id,
    )[:, batch.input_ids.shape[1] :]
    tl_out = bridge.generate(
        batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=n,
        do_sample=False,
        return_type="tokens",
        verbose=False,
        stop_at_eos=False,
    )[:, batch.input_ids.shape[1] :]
    stops = set(stop_ids(tiny))
    for h, t in zip(hf_out.tolist(), tl_out.tolist(), strict=True):
        cut = next((i for i, x in enumerate(h) if x in stops), n)
        assert t[:cut] == h[:cut]
    # the bridge shares the HF weights rather than copying them
    assert (
        bridge.blocks[0].original_component.mlp.up_proj.weight.data_ptr()
        == tiny.hf.model.layers[0].mlp.up_proj.weight.data_ptr()
    )


def test_sampling_is_reproducible_and_leaves_global_rng_alone(tiny):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = generate(tiny, PROMPTS[:2], max_new_tokens=8, do_sample=True, seed=7, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate(tiny, PROMPTS[:2], max_new_tokens=8, do_sample=True, seed=7, progress=False)
    assert [g.response_ids for g in a] == [g.response_ids for g in b]


def test_judged_generations_are_cached_and_refused_for_other_prompts(tiny, tmp_path, monkeypatch):
    import importlib

    import pytest

    from harc_interp import HarcError, Prompt, PromptSet

    gen_mod = importlib.import_module(
        "harc_interp.capture.generate"
    )  # the package's `generate` is the function

    ps = PromptSet("p", tuple(Prompt(f"id{i}", t) for i, t in enumerate(PROMPTS)))
    path = tmp_path / "gens.json"
    rows = gen_mod.judged_generations(
        tiny, ps, path, lambda text: "sea" in text, max_new_tokens=6, progress=False
    )
    assert [r["id"] for r in rows] == ps.ids
    assert all(r["refusal"] == ("sea" in r["response"]) for r in rows)
    monkeypatch.setattr(gen_mod, "generate", lambda *a, **k: pytest.fail("regenerated"))
    again = gen_mod.judged_generations(tiny, ps, path, lambda text: True, max_new_tokens=6, progress=False)
    assert again == rows  # read back from the run folder, not judged again
    other = PromptSet("p", ps.prompts[:2])
    with pytest.raises(HarcError, match="other prompts"):
        gen_mod.judged_generations(tiny, other, path, lambda text: True, max_new_tokens=6, progress=False)


def test_length_batches_give_long_prompts_small_batches():
    """Longest first; a batch padded to its longest holds at most 1.5x the tokens of `batch_size`
    median-length rows, so one long prompt does not pad a full batch; every index exactly once."""
    from harc_interp.capture.generate import length_batches

    lengths = [10] * 7 + [100]
    batches = length_batches(lengths, batch_size=4)  # budget 1.5 * 4 * 10 = 60 tokens
    assert batches[0] == (0, [7])  # the long prompt alone
    assert [len(rows) for _, rows in batches] == [1, 4, 3]
    assert [start for start, _ in batches] == [0, 1, 5]
    assert sorted(i for _, rows in batches for i in rows) == list(range(8))
    assert length_batches([5] * 6, batch_size=4) == [(0, [0, 1, 2, 3]), (4, [4, 5])]  # uniform: as before
