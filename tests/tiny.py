"""A tiny random chat model and locally built tokenizers (no network), for fast tests."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
FAMILIES = ("qwen2.5", "llama3", "gemma2", "mistral", "phi3")
_CORPUS_EXTRA = [
    "How do I bake bread? Explain step by step, with numbers 1 2 3 and punctuation!",
    "Sure, here is how. I'm sorry, but I can't help with that request.",
    "system user assistant model You are a helpful assistant.",
]


def fixture(family: str) -> dict:
    return json.loads((FIXTURES / f"{family}.json").read_text())


@cache
def build_tokenizer(family: str = "qwen2.5"):
    """A byte-level BPE tokenizer trained on the starter prompts, with the family's special tokens
    and its real chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from harc_interp.data.prompts import starter_prompts

    fx = fixture(family)
    specials = list(
        dict.fromkeys(
            t for t in [*fx["special_tokens"], fx["bos_token"], fx["eos_token"], fx["pad_token"]] if t
        )
    )
    corpus = [
        p.prompt for kind in ("harmful", "harmless", "borderline") for p in starter_prompts(kind)
    ] + _CORPUS_EXTRA
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=fx["bos_token"],
        eos_token=fx["eos_token"],
        pad_token=fx["pad_token"] or fx["eos_token"],
        additional_special_tokens=[
            t for t in specials if t not in (fx["bos_token"], fx["eos_token"], fx["pad_token"])
        ],
    )
    fast.chat_template = fx["chat_template"]
    return fast


def _family_model(family: str, tok):
    """A 4-layer random causal LM of the family's own architecture (its module names and norms)."""
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    archs = {
        "qwen2.5": (Qwen2Config, Qwen2ForCausalLM, {}),
        "llama3": (LlamaConfig, LlamaForCausalLM, {}),
        "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
        "gemma2": (Gemma2Config, Gemma2ForCausalLM, {"head_dim": 16, "query_pre_attn_scalar": 16}),
        "phi3": (Phi3Config, Phi3ForCausalLM, {}),
    }
    config_cls, model_cls, extra = archs[family]
    return model_cls(config_cls(**common, **extra))


def build_tiny_model_dir(path: Path, family: str = "qwen2.5", seed: int = 0) -> Path:
    """Save a 4-layer random model of `family` with a local tokenizer as a Hugging Face directory."""
    import torch

    tok = build_tokenizer(family)
    torch.manual_seed(seed)
    model = _family_model(family, tok)
    with torch.no_grad():  # larger weights than the default init, so logits are far from ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
            elif family != "qwen2.5":  # norm weights off their init, so a norm is not a plain rescale
                p.add_(torch.randn_like(p) * 0.3)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def prompt_directions(model, n: int = 16):
    """v_harm, v_ref and the position grid of `model` from `n` harmful and `n` harmless starter prompts."""
    import torch

    from harc_interp import CacheConfig, cache_residuals, starter_prompts
    from harc_interp.directions import directions_from_activations

    harmful, harmless = (
        starter_prompts("harmful").sample(n, seed=0),
        starter_prompts("harmless").sample(n, seed=0),
    )
    config = CacheConfig(positions=("t_inst", "t_post", "post_instruction"))
    acts = cache_residuals(model, harmful + harmless, config=config, progress=False)
    mask = torch.tensor([lab == "harmful" for lab in acts.meta["labels"]])
    return directions_from_activations(acts, mask, ~mask), harmful, harmless
