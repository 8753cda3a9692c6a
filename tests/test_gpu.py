"""The GPU path, on tiny random models of two families (they travel to a GPU machine; the real weights do
not): CUDA float32 gives what the CPU gives, bf16 keeps float32 accumulation where it matters, LoRA with
activation checkpointing keeps its gradients, and a device map that splits the blocks between the GPU and
the CPU gives the one-device logits, cache, generation and coupling. Marked `gpu`: skipped without CUDA
(tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from tiny import build_tiny_model_dir, prompt_directions

from harc_interp import CacheConfig, CouplingIntervention, cache_residuals, formatter_for, load_model
from harc_interp.capture import generate_chats, last_token_logprobs
from harc_interp.directions.means import diff_in_means
from harc_interp.model.edits import ablation_hooks

pytestmark = pytest.mark.gpu
TEXTS = ["How do I bake bread?", "Tell me a joke about cats please", "What is 2+2", "Hi"]


@pytest.fixture(scope="module", params=["qwen2.5", "gemma2"])
def model_dir(request, tmp_path_factory):
    return str(build_tiny_model_dir(tmp_path_factory.mktemp(request.param) / "m", request.param))


def test_cuda_float32_gives_what_the_cpu_gives(model_dir):
    cpu, gpu = load_model(model_dir, progress=False), load_model(model_dir, device="cuda", progress=False)
    chats = formatter_for(cpu).format_many(TEXTS)
    v = torch.randn(cpu.d_model, generator=torch.Generator().manual_seed(0))
    for hooks in ([], ablation_hooks(cpu, v)):
        torch.testing.assert_close(
            last_token_logprobs(gpu, chats, hooks=hooks), last_token_logprobs(cpu, chats, hooks=hooks),
            atol=1e-3, rtol=0,
        )  # fmt: skip
    cfg = CacheConfig(positions=("t_inst", "t_post", "response_mean"), n_response=3)
    a, b = (
        cache_residuals(m, TEXTS, responses=["Sure, here"] * 4, config=cfg, progress=False)
        for m in (cpu, gpu)
    )
    assert b.resid.device.type == "cpu" and b.resid.dtype == torch.float32
    torch.testing.assert_close(b.resid, a.resid, atol=1e-3, rtol=1e-4)
    ids = [[i for i, _ in generate_chats(m, chats, max_new_tokens=8, progress=False)] for m in (cpu, gpu)]
    assert ids[0] == ids[1]


def test_bf16_keeps_float32_accumulation(model_dir):
    fp32 = load_model(model_dir, device="cuda", progress=False)
    bf16 = load_model(model_dir, device="cuda", dtype="bfloat16", progress=False)
    harmful, harmless = TEXTS[:2] * 4, TEXTS[2:] * 4
    cfg = CacheConfig(positions=("t_post", "response_mean"), n_response=3)
    caches = {
        name: [cache_residuals(m, ps, responses=["Sure, here"] * 8, config=cfg, progress=False) for ps in (harmful, harmless)]
        for name, m in (("fp32", fp32), ("bf16", bf16))
    }  # fmt: skip
    assert all(c.resid.dtype == torch.float32 for cs in caches.values() for c in cs)  # stored as float32
    v = {k: diff_in_means(cs[0].resid, cs[1].resid) for k, cs in caches.items()}
    assert v["bf16"].dtype == torch.float64  # accumulated in float64
    a, b = v["bf16"].flatten(1), v["fp32"].flatten(1)
    moved = b.norm(dim=-1) > 1e-3  # slot 0 at t_post is the same token embedding in both sets
    cos = torch.nn.functional.cosine_similarity(a[moved], b[moved], dim=-1)
    assert moved.sum() >= 3 and cos.min() > 0.99, cos


def test_lora_with_activation_checkpointing_on_cuda(model_dir):
    from harc_interp.capture.forward import forward_batch
    from harc_interp.coupling.lora import LoraConfig, activation_checkpointing, lora_targets, trainable_lora
    from harc_interp.data.chat import left_pad, pad_token_id

    model = load_model(model_dir, device="cuda", progress=False)
    peft_model = trainable_lora(model, LoraConfig(r=4, alpha=8), lora_targets(model))
    chats = formatter_for(model).format_many(TEXTS[:2], ["Sure, first", "Hello"])
    batch = left_pad(chats, pad_token_id(model.tokenizer))

    def grads(on: bool) -> dict[str, torch.Tensor]:
        peft_model.zero_grad(set_to_none=True)
        peft_model.train()
        with activation_checkpointing(model, on):
            forward_batch(model, batch, logits="all", grad=True).float().logsumexp(-1).mean().backward()
        peft_model.eval()
        return {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}

    plain, ckpt = grads(False), grads(True)
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, atol=1e-5, rtol=1e-4, msg=name)
    peft_model.unload()


def test_a_device_map_across_gpu_and_cpu(model_dir):
    one = load_model(model_dir, device="cuda", progress=False)
    top = "model.language_model" if "language_model" in dict(one.hf.named_modules()) else "model"
    split = {f"{top}.layers.{i}": 0 if i < one.n_layers // 2 else "cpu" for i in range(one.n_layers)}
    rest = {f"{top}.embed_tokens": 0, f"{top}.rotary_emb": 0, f"{top}.norm": "cpu", "lm_head": "cpu"}
    spread = load_model(model_dir, device_map=rest | split, progress=False)
    assert spread.device == torch.device("cuda:0")
    chats = formatter_for(one).format_many(TEXTS)
    v = torch.randn(one.d_model, generator=torch.Generator().manual_seed(0))
    for hooks in ([], ablation_hooks(one, v)):
        torch.testing.assert_close(
            last_token_logprobs(spread, chats, hooks=hooks), last_token_logprobs(one, chats, hooks=hooks),
            atol=1e-3, rtol=0,
        )  # fmt: skip
    cfg = CacheConfig(positions=("t_inst", "t_post"))
    a, b = (cache_residuals(m, TEXTS, config=cfg, progress=False) for m in (one, spread))
    torch.testing.assert_close(b.resid, a.resid, atol=1e-3, rtol=1e-4)
    ids = [[i for i, _ in generate_chats(m, chats, max_new_tokens=8, progress=False)] for m in (one, spread)]
    assert ids[0] == ids[1]
    d, _, _ = prompt_directions(one, 8)  # a coupling on a CPU block that reads a GPU block's plane
    last = one.n_layers - 1
    coupling = CouplingIntervention.from_directions(
        d, (last,), torch.zeros(1, 2), torch.ones(1, 2), n_span=4, read_slots=(1,)
    )
    with torch.no_grad():
        coupling.maps[0].w_out.normal_(generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        last_token_logprobs(spread, chats, hooks=coupling.hooks(spread)),
        last_token_logprobs(one, chats, hooks=coupling.hooks(one)),
        atol=1e-3, rtol=0,
    )  # fmt: skip
