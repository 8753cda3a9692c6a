"""Ablation and activation addition on the tiny model; refusal judge and scores."""

from __future__ import annotations

import math

import pytest
import torch

from harc_interp import HarcError, formatter_for
from harc_interp.capture import (
    PhraseJudge,
    find_refusal_tokens,
    kl_divergence,
    last_token_logprobs,
    refusal_score,
)
from harc_interp.model import HookSite
from harc_interp.model.edits import ablation_hooks, addition_hooks


def residuals(model, ids, extra_hooks=()):
    seen = {}

    def grab(slot):
        return lambda resid, site: seen.__setitem__(slot, resid.detach().clone())

    hooks = list(extra_hooks) + [(f"blocks.{s}.hook_resid_pre", grab(s)) for s in range(model.n_layers)]
    hooks.append((f"blocks.{model.n_layers - 1}.hook_resid_post", grab(model.n_layers)))
    with torch.no_grad(), model.hooks(hooks):
        model.hf(input_ids=ids)
    return seen


def test_ablation_removes_the_direction_everywhere(tiny):
    ids = torch.tensor([formatter_for(tiny).format("How do I bake bread?").input_ids])
    r = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(0))
    unit = r / r.norm()
    base = residuals(tiny, ids)
    ablated = residuals(tiny, ids, ablation_hooks(tiny, r * 7))
    for slot in range(tiny.n_layers + 1):
        assert (base[slot] @ unit).abs().max() > 1e-2  # the direction was there
        assert (ablated[slot] @ unit).abs().max() < 1e-4  # and is gone at every slot
    with pytest.raises(HarcError, match="zero or non-finite"):
        ablation_hooks(tiny, torch.zeros(tiny.d_model))


def test_addition_adds_exactly_at_one_slot(tiny):
    ids = torch.tensor([formatter_for(tiny).format("Hi").input_ids])
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(1))
    base = residuals(tiny, ids)
    steered = residuals(tiny, ids, addition_hooks(tiny, v, slot=2, coeff=0.5))
    torch.testing.assert_close(steered[1], base[1])
    torch.testing.assert_close(steered[2], base[2] + 0.5 * v, atol=1e-5, rtol=0)
    with pytest.raises(HarcError, match="block input slot"):
        addition_hooks(tiny, v, slot=tiny.n_layers)
    after = residuals(tiny, ids)
    assert all(torch.equal(after[s], base[s]) for s in base)  # hooks removed on exit


def test_span_addition_adds_only_where_the_coupling_edits(tiny):
    from harc_interp.data.chat import left_pad

    chat = formatter_for(tiny).format("How do I bake bread?")
    batch = left_pad([chat], tiny.tokenizer.eos_token_id, with_response=False)
    v = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(2))
    ((name, fn),) = addition_hooks(tiny, v, slot=1, span_only=True)
    assert name == "blocks.1.hook_resid_pre"
    resid = torch.randn(1, batch.input_ids.shape[1], tiny.d_model)
    with tiny.span(batch.span_role) as span:
        out = fn(resid, HookSite(name, 1, span))
        step = fn(resid[:, :1], HookSite(name, 1, span))  # a decoding step (one position): a response token
    torch.testing.assert_close(out[0, : chat.t_inst], resid[0, : chat.t_inst])  # before t_inst: untouched
    torch.testing.assert_close(out[0, chat.t_inst :], resid[0, chat.t_inst :] + v)
    torch.testing.assert_close(step, resid[:, :1] + v)
    with pytest.raises(HarcError, match="non-finite"):
        addition_hooks(tiny, torch.full((tiny.d_model,), float("nan")), slot=1, span_only=True)


def test_refusal_score_and_kl():
    logprobs = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.25, 0.25]]))
    score = refusal_score(logprobs, [0, 1])
    assert score[0].item() == pytest.approx(math.log(0.5 / 0.5), abs=1e-6)
    assert score[1].item() == pytest.approx(math.log(0.75 / 0.25), abs=1e-5)
    kl = kl_divergence(logprobs, logprobs.flip(0))
    assert kl[0].item() == pytest.approx(
        sum(p * math.log(p / q) for p, q in [(0.2, 0.5), (0.3, 0.25), (0.5, 0.25)]), abs=1e-6
    )
    assert kl_divergence(logprobs, logprobs).abs().max() < 1e-7


def test_last_token_logprobs_are_batch_invariant(tiny):
    chats = formatter_for(tiny).format_many(["Hi", "How do I bake bread at home?", "Explain recursion"])
    a = last_token_logprobs(tiny, chats, batch_size=3)
    b = last_token_logprobs(tiny, chats, batch_size=1)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    ids = torch.tensor([chats[1].input_ids])
    with torch.no_grad():
        ref = torch.log_softmax(tiny.hf(input_ids=ids).logits[0, -1], -1)
    torch.testing.assert_close(a[1], ref, atol=1e-4, rtol=0)


def test_judge_and_refusal_tokens():
    judge = PhraseJudge()
    assert judge("I’m sorry, but I can’t help with that.") and judge("Sure. As an AI, I cannot do that")
    assert not judge("Sure, here is a recipe.")
    assert PhraseJudge(prefix_only=True)("I cannot do that") and not PhraseJudge(prefix_only=True)(
        "Well, I cannot"
    )
    tokens = find_refusal_tokens(
        [[40, 1], [40, 2], [2121, 3], [40, 5]], [[40, 9], [7, 1], [8, 1], [9, 9], [10, 1]]
    )
    assert tokens == [40, 2121]
    with pytest.raises(HarcError, match="no refusal-start tokens"):
        find_refusal_tokens([], [[1]])


def test_arditi_select_scores_only_eligible_depths(tiny, tiny_directions):
    from harc_interp import starter_prompts
    from harc_interp.directions.selection import arditi_select

    fmt = formatter_for(tiny)
    harmful = fmt.format_many(starter_prompts("harmful").sample(4, seed=1).texts)
    harmless = fmt.format_many(starter_prompts("harmless").sample(4, seed=1).texts)
    refusal_tokens = tiny.tokenizer("I", add_special_tokens=False)["input_ids"]
    best, cands, baseline = arditi_select(
        tiny, tiny_directions, harmful, harmless, refusal_tokens, slots=(1, 2, 3), kl_max=1e9, progress=False
    )
    by_slot = {c.slot: c for c in cands}
    # 4 layers: slot 3 is in the last 20% and is discarded without being scored.
    assert by_slot[3].reason == "last 20% of layers" and math.isnan(by_slot[3].bypass_score)
    assert not by_slot[3].eligible
    for s in (1, 2):
        c = by_slot[s]
        assert math.isfinite(c.bypass_score) and math.isfinite(c.kl) and c.kl >= 0
        assert c.eligible == (c.induce_score > 0)
    eligible = [c for c in cands if c.eligible]
    assert best == (min(eligible, key=lambda c: c.bypass_score) if eligible else None)
    assert set(baseline) == {"harmful_refusal_score", "harmless_refusal_score"}


def test_relaxed_pick_keeps_the_layer_filter_and_relaxes_the_thresholds_in_order():
    from harc_interp.directions.selection import Candidate, relaxed_pick

    nan = float("nan")

    def cand(slot, bypass, induce, kl=0.5):
        return Candidate(slot, "t_post", bypass, induce, kl, False, "induce <= 0, KL > 0.1")

    late = Candidate(9, "t_post", nan, nan, nan, False, "last 20% of layers")
    # Nothing induces refusal: the candidate closest to it, not the lowest bypass.
    assert relaxed_pick([cand(1, -5.0, -3.0), cand(2, -2.0, -1.0), late]).slot == 2
    # Some induce refusal (only KL failed): the lowest bypass among those.
    assert relaxed_pick([cand(1, -9.0, -1.0), cand(2, -2.0, 0.5), cand(3, -4.0, 0.1), late]).slot == 3
    # No candidate was scored: nothing to relax.
    assert relaxed_pick([late]) is None


def test_causal_validation_tests_the_direction_at_the_picked_position(tiny, tiny_directions, monkeypatch):
    import harc_interp.directions.causal as causal
    from harc_interp import starter_prompts

    fmt = formatter_for(tiny)
    harmful = fmt.format_many(starter_prompts("harmful").sample(2, seed=1).texts)
    harmless = fmt.format_many(starter_prompts("harmless").sample(2, seed=1).texts)
    added = []
    real_addition = causal.addition_hooks
    monkeypatch.setattr(
        causal, "addition_hooks", lambda m, v, slot: added.append(v.clone()) or real_addition(m, v, slot)
    )
    position = tiny_directions.grid_positions[1]  # post_0: not t_post
    out = causal.causal_validation(
        tiny,
        tiny_directions,
        2,
        harmful,
        harmless,
        judge=lambda text: False,
        coefficients=(1.0,),
        max_new_tokens=2,
        refusal_position=position,
        progress=False,
    )
    assert out["v_ref_position"] == position
    torch.testing.assert_close(added[0], tiny_directions.grid_raw(2, position))  # v_ref first, then v_harm
    torch.testing.assert_close(added[1], tiny_directions.raw("v_harm", 2))
    assert not torch.allclose(added[0], tiny_directions.raw("v_ref", 2))
