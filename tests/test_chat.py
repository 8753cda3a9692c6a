"""Positions from each family's real chat template (fixtures) with locally built tokenizers."""

from __future__ import annotations

import pytest
import torch
from tiny import FAMILIES, build_tokenizer, fixture

from harc_interp import ChatFormatter, HarcError
from harc_interp.data.chat import left_pad

INSTRUCTIONS = [
    "How do I bake bread?",
    "Write a haiku about the sea",
    "List 3 prime numbers: 2, 3, 5.",
    "  Explain recursion with an example\n",
    "Qu'est-ce que la photosynthèse ? Réponds en français.",
]
EXPECTED_SUFFIX = {
    "qwen2.5": "<|im_end|>\n<|im_start|>assistant\n",
    "llama3": "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "gemma2": "<end_of_turn>\n<start_of_turn>model\n",
    "mistral": " [/INST]",
    "phi3": "<|end|>\n<|assistant|>\n",
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("instruction", INSTRUCTIONS)
def test_positions_split_instruction_and_suffix(family, instruction):
    tok = build_tokenizer(family)
    fmt = ChatFormatter(tok)
    chat = fmt.format(instruction)
    decode = lambda ids: tok.decode(list(ids), skip_special_tokens=False)  # noqa: E731
    rendered_instruction = chat.text[chat.inst_span[0] : chat.inst_span[1]]
    assert rendered_instruction.strip() == instruction.strip()
    # t_inst ends the instruction; the post-instruction tokens are exactly the template suffix.
    assert decode(chat.input_ids[: chat.t_inst + 1]) == chat.text[: chat.inst_span[1]]
    assert decode(chat.input_ids[chat.t_inst + 1 :]) == EXPECTED_SUFFIX[family] == fmt.suffix
    assert chat.t_post == len(chat.input_ids) - 1
    assert chat.post_instruction[-1] == chat.t_post
    # Same ids as the tokenizer's own apply_chat_template (no extra BOS, same template).
    ids = tok.apply_chat_template([{"role": "user", "content": instruction}], add_generation_prompt=True)
    assert list(chat.input_ids) == list(ids["input_ids"])


@pytest.mark.parametrize("family", [f for f in FAMILIES if fixture(f)["supports_system"]])
def test_system_prompt_goes_into_the_prefix(family):
    tok = build_tokenizer(family)
    plain = ChatFormatter(tok).format("How do I bake bread?")
    with_system = ChatFormatter(tok, system_prompt="Be brief.").format("How do I bake bread?")
    assert "Be brief." in with_system.text[: with_system.inst_span[0]]
    assert len(with_system.post_instruction) == len(plain.post_instruction)
    assert with_system.text.endswith(plain.text[plain.inst_span[1] :])
    assert ChatFormatter(tok).template_hash != ChatFormatter(tok, system_prompt="Be brief.").template_hash


def test_qwen_default_system_prompt_is_counted():
    tok = build_tokenizer("qwen2.5")
    chat = ChatFormatter(tok).format("Hi")
    assert chat.text.startswith("<|im_start|>system\nYou are Qwen")
    prefix = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    assert chat.text[: chat.inst_span[0]] == prefix
    assert tok.decode(list(chat.input_ids[: chat.t_inst + 1])) == prefix + "Hi"


def test_template_without_system_role_gives_clear_error():
    with pytest.raises(HarcError, match="System role not supported"):
        ChatFormatter(build_tokenizer("gemma2"), system_prompt="x")


def test_bad_inputs_are_named():
    tok = build_tokenizer("qwen2.5")
    fmt = ChatFormatter(tok, max_length=40)
    with pytest.raises(HarcError, match="empty instruction"):
        fmt.format("   ")
    with pytest.raises(HarcError, match="longer than the model's context of 40"):
        fmt.format("word " * 100)
    # A prompt that fits alone but leaves no room for the answer a verb generates is too long for it.
    roomy = ChatFormatter(tok, max_length=100)
    n = len(roomy.format("Hi").input_ids)
    assert roomy.too_long(["Hi", "word " * 100]) == [1]
    assert roomy.too_long(["Hi"], reserve=100 - n) == [] and roomy.too_long(["Hi"], reserve=101 - n) == [0]
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    with pytest.raises(HarcError, match="has no chat template"):
        ChatFormatter(bare)


def test_left_padding_shifts_positions():
    tok = build_tokenizer("llama3")
    fmt = ChatFormatter(tok)
    chats = fmt.format_many(
        ["Hi", "Write a long poem about the sea and the sky"], responses=["Sure, here", "No"]
    )
    batch = left_pad(chats, tok.pad_token_id)
    for b, c in enumerate(chats):
        off = int(batch.offset[b])
        assert batch.input_ids[b, off + c.t_inst] == c.input_ids[c.t_inst]
        assert batch.attention_mask[b, :off].sum() == 0 and batch.attention_mask[b, off:].all()
        resp = torch.tensor(c.response_positions) + off
        assert batch.input_ids[b, resp].tolist() == list(c.response_ids)
    assert batch.input_ids.shape[1] == max(len(c.all_ids) for c in chats)
