"""The family matrix: tiny random models of five architectures (Qwen2, Llama-3, Mistral, Gemma-2, Phi-3)
with their own chat templates. For each: hooks leave logits exact, cached residuals equal HF's hidden
states, attn_out and mlp_out are what each block adds to the residual stream (post-norms included),
batched generation equals one-at-a-time HF generation, LoRA finds the family's projections, and a
coupling is the identity at init and confined to the plane."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, build_tiny_model_dir, prompt_directions

from harc_interp import (
    CacheConfig,
    CouplingIntervention,
    cache_residuals,
    formatter_for,
    load_model,
)
from harc_interp.capture import generate_chats
from harc_interp.coupling import lora_targets
from harc_interp.data.chat import left_pad, pad_token_id
from harc_interp.model import HookSite

PROJECTIONS = {
    "qwen2.5": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "llama3": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "mistral": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gemma2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},  # fused: a fixed name list misses them
}
PROMPTS = ["How do I bake bread?", "Name a colour", "Hi"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    path = build_tiny_model_dir(tmp_path_factory.mktemp(request.param) / "model", family=request.param)
    return request.param, load_model(str(path), progress=False)


def batch_of(model, texts=PROMPTS):
    chats = formatter_for(model).format_many(texts)
    return chats, left_pad(chats, pad_token_id(model.tokenizer), with_response=False)


def test_hooks_leave_logits_exact_and_the_cache_equals_hf_hidden_states(family):
    name, model = family
    chats, batch = batch_of(model)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    with torch.no_grad():
        plain = model.hf(**kwargs, output_hidden_states=True)
        sites = [
            f"blocks.{i}.hook_{k}"
            for i in range(model.n_layers)
            for k in ("resid_pre", "attn_out", "mlp_out")
        ]
        with model.hooks([(s, lambda r, site: None) for s in sites]):
            hooked = model.hf(**kwargs).logits
    assert torch.equal(hooked, plain.logits), name
    acts = cache_residuals(
        model, list(PROMPTS), config=CacheConfig(positions=("t_inst", "t_post")), progress=False
    )
    for slot in range(model.n_layers):  # slot n_layers is the final norm's input, not hidden_states[-1]
        for j, pos in enumerate(("t_inst", "t_post")):
            idx = batch.offset + torch.tensor([getattr(c, pos) for c in chats])
            expected = plain.hidden_states[slot][torch.arange(len(chats)), idx]
            torch.testing.assert_close(  # the cache runs the shared template prefix once: float rounding
                acts.resid[:, slot, j], expected, atol=1e-4, rtol=1e-4, msg=f"{name} {slot} {pos}"
            )


def test_attn_and_mlp_outputs_are_what_each_block_adds(family):
    # resid_post = resid_pre + attn_out + mlp_out only if the hooks read what is added to the residual:
    # on Gemma-2 that is the post-attention / post-feedforward norm's output, not the raw sublayer's.
    name, model = family
    _, batch = batch_of(model)
    seen = {}

    def keep(resid, site):
        seen[site.name] = resid.detach().clone()

    sites = [
        f"blocks.{i}.hook_{k}"
        for i in range(model.n_layers)
        for k in ("resid_pre", "attn_out", "mlp_out", "resid_post")
    ]
    with torch.no_grad(), model.hooks([(s, keep) for s in sites]):
        model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for i in range(model.n_layers):
        total = (
            seen[f"blocks.{i}.hook_resid_pre"]
            + seen[f"blocks.{i}.hook_attn_out"]
            + seen[f"blocks.{i}.hook_mlp_out"]
        )
        torch.testing.assert_close(
            total, seen[f"blocks.{i}.hook_resid_post"], atol=1e-4, rtol=1e-4, msg=f"{name} {i}"
        )


def test_ablating_upstream_removes_the_direction_on_every_family(family):
    from harc_interp import ablation_hooks

    name, model = family
    _, batch = batch_of(model)
    r = torch.randn(model.d_model, generator=torch.Generator().manual_seed(0))
    r = r / r.norm()
    seen = {}
    hooks = [
        *ablation_hooks(model, r, layers=range(2)),
        ("blocks.2.hook_resid_pre", lambda x, s: seen.setdefault("h", x)),
    ]
    with torch.no_grad(), model.hooks(hooks):
        model.hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert (seen["h"] @ r).abs().max() < 1e-4, name  # nothing upstream of block 2 wrote along r


def test_batched_generation_equals_one_at_a_time_hf(family):
    name, model = family
    chats = formatter_for(model).format_many(PROMPTS)
    batched = generate_chats(model, chats, max_new_tokens=5, batch_size=3, progress=False)
    for chat, (ids, _) in zip(chats, batched, strict=True):
        out = model.hf.generate(
            input_ids=torch.tensor([chat.input_ids]),
            max_new_tokens=5,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=pad_token_id(model.tokenizer),
        )[0, chat.n_prompt :].tolist()
        assert ids == out[: len(ids)], name


def test_lora_finds_the_family_projections(family):
    name, model = family
    assert set(lora_targets(model)) == PROJECTIONS[name]


def test_coupling_is_the_identity_at_init_and_confined_on_every_family(family):
    name, model = family
    d, _, _ = prompt_directions(model, 8)
    coupling = CouplingIntervention.from_directions(d, (2,), torch.zeros(1, 2), torch.ones(1, 2))
    _, batch = batch_of(model)
    kwargs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    with torch.no_grad():
        before = model.hf(**kwargs).logits
        with coupling.apply(model), model.span(batch.span_role):
            during = model.hf(**kwargs).logits
    torch.testing.assert_close(during, before, atol=1e-5, rtol=0, msg=name)
    with torch.no_grad():
        coupling.maps[0].w_out.normal_(generator=torch.Generator().manual_seed(1))
    ((hook_name, hook),) = coupling.hooks(model)
    h = torch.randn(3, batch.input_ids.shape[1], model.d_model, generator=torch.Generator().manual_seed(2))
    with model.span(batch.span_role) as span:
        out = hook(h, HookSite(hook_name, 2, span))
    u = coupling.bases[0]
    assert ((out - h) @ u).norm() > 1e-3, name
    torch.testing.assert_close(out - (out @ u) @ u.T, h - (h @ u) @ u.T, atol=1e-5, rtol=0, msg=name)
