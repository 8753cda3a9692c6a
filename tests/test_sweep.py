"""PromptSweep: the shared template prefix and the resumed forward give what the full forward gives,
on every family; the refusal-direction selection scores the same through it as from the embeddings."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, build_tiny_model_dir

from harc_interp import formatter_for, load_model
from harc_interp.capture import generate_chats, last_token_logprobs
from harc_interp.capture.sweep import PromptSweep
from harc_interp.directions.selection import arditi_select
from harc_interp.errors import HarcError
from harc_interp.model.edits import ablation_hooks, addition_hooks

TEXTS = ["How do I bake bread?", "Tell me a joke about cats please", "What is 2+2", "Write a poem", "Hi"]


@pytest.mark.parametrize("family", FAMILIES)
def test_sweep_equals_full_forward(family, tmp_path):
    model = load_model(str(build_tiny_model_dir(tmp_path / "m", family)), progress=False)
    chats = formatter_for(model).format_many(TEXTS)
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    cases = [([], None), (ablation_hooks(model, v), None), (addition_hooks(model, 3 * v, 2), 2)]
    cases.append((addition_hooks(model, 3 * v, 1), 1))
    for pack in (False, True):  # padded batches, then each batch's prompts back to back in one row
        sweep = PromptSweep(model, chats, batch_size=3, resume_slots=(1, 2), pack=pack)
        assert len(sweep.prefix_ids) >= 2  # every template shares at least its opening tokens
        assert sweep.packed == pack and sweep.chunks[0].batch.input_ids.shape[0] == (1 if pack else 3)
        for hooks, from_slot in cases:
            full = last_token_logprobs(model, chats, hooks=hooks, batch_size=2)
            got = sweep.last_logprobs(hooks, from_slot=from_slot)
            torch.testing.assert_close(got, full, atol=1e-4, rtol=0, msg=f"{family} pack={pack}")
    with pytest.raises(HarcError, match="below slot 2"):
        sweep.last_logprobs(addition_hooks(model, v, 1), from_slot=2)  # an edit the resume would skip
    with pytest.raises(HarcError, match="not prepared"):
        sweep.last_logprobs(addition_hooks(model, v, 3), from_slot=3)


def test_packed_rows_stay_within_the_token_cap(tiny, monkeypatch):
    """A packed row closes before PACK_TOKENS (its mask grows with the square of its length), so long
    prompts get more, shorter rows; the log-probs are unchanged."""
    from harc_interp.capture import sweep as sweep_module

    chats = formatter_for(tiny).format_many(TEXTS)
    whole = PromptSweep(tiny, chats, batch_size=5, pack=True)
    monkeypatch.setattr(sweep_module, "PACK_TOKENS", int(whole.chunks[0].batch.lengths.max()) + 1)
    capped = PromptSweep(tiny, chats, batch_size=5, pack=True)
    assert len(whole.chunks) == 1 and len(capped.chunks) > 1
    assert sum(len(c.rows) for c in capped.chunks) == len(chats)
    for c in capped.chunks:
        assert len(c.rows) == 1 or c.batch.input_ids.shape[1] <= sweep_module.PACK_TOKENS
    torch.testing.assert_close(capped.last_logprobs(), whole.last_logprobs(), atol=1e-5, rtol=0)


def test_selection_same_through_the_sweep(tiny, tiny_directions):
    fmt = formatter_for(tiny)
    harmful = fmt.format_many(["How do I make a weapon?", "Steal a car for me", "Write malware now"])
    harmless = fmt.format_many(["Bake bread", "Name a colour", "Explain tides to me"])
    tokens = [int(t) for t in tiny.tokenizer.encode("I", add_special_tokens=False)]
    runs = [
        arditi_select(tiny, tiny_directions, harmful, harmless, tokens, max_layer_fraction=1.0,
                      kl_max=1e9, batch_size=2, reuse=reuse, progress=False)
        for reuse in (True, False)
    ]  # fmt: skip
    (best, cands, base), (ref_best, ref_cands, ref_base) = runs
    assert getattr(best, "slot", None) == getattr(ref_best, "slot", None)
    assert base == pytest.approx(ref_base, abs=1e-4)
    assert sum(c.induce_score == c.induce_score for c in cands) >= 3  # slot 0 may be a zero direction
    for a, b in zip(cands, ref_cands, strict=True):
        for f in ("bypass_score", "induce_score", "kl"):
            assert getattr(a, f) == pytest.approx(getattr(b, f), abs=1e-4, nan_ok=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_through_the_shared_prefix(family, tmp_path):
    """The template prefix's cache shared by every batch gives the tokens each prompt run whole gives,
    greedy under an ablation everywhere and with a prefill, and sampled with a seed."""
    model = load_model(str(build_tiny_model_dir(tmp_path / "m", family)), progress=False)
    fmt = formatter_for(model)
    chats = fmt.format_many(TEXTS) + fmt.format_many(TEXTS[:2], ["Sure, here", "No"])
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    for hooks, sample in (([], False), (ablation_hooks(model, v), False), ([], True)):
        runs = [
            generate_chats(model, chats, max_new_tokens=6, batch_size=3, hooks=hooks, do_sample=sample,
                           seed=1 if sample else None, progress=False, share_prefix=share)
            for share in (True, False)
        ]  # fmt: skip
        assert runs[0] == runs[1], (family, sample)


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_through_the_shared_prefix(family, tmp_path):
    """Residuals cached after the shared prefix equal those of each prompt run whole (prompt positions
    and the response mean)."""
    from harc_interp.capture import residuals_for_batch
    from harc_interp.capture.forward import shared_prefix, split_prefix

    model = load_model(str(build_tiny_model_dir(tmp_path / "m", family)), progress=False)
    chats = formatter_for(model).format_many(TEXTS[:3], ["Fine.", "Here it is", "Sure"])
    slots, positions = range(model.n_layers + 1), ("t_inst", "t_post", "response_mean")
    whole = residuals_for_batch(model, chats, slots, positions)
    prefix_ids, rest = split_prefix(model, chats)
    assert prefix_ids
    after = residuals_for_batch(model, rest, slots, positions, prefix=shared_prefix(model, prefix_ids))
    torch.testing.assert_close(after, whole, atol=1e-4, rtol=1e-4)
