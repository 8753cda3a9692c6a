"""The paper-faithful HARC objective: LoRA (peft) on every attention and MLP projection.

Loss per micro-batch (harmful prompts with refusal responses; harmless and borderline prompts with the
base model's own responses), at each selected layer slot, directions detached:
    prompt side   c_h = cos(h_t_inst, v_harm), c_r = cos(h_t_post, v_ref)
                  harmful: relu(m − c_r) + relu(m − c_h); harmless/borderline: relu(c_r) + relu(c_h)
    response side the same hinge on the mean of the first N response tokens with v_harm_resp / v_ref_resp
    + kl_weight · KL(base ‖ tuned) over response tokens of harmless and borderline examples
    + ce_weight · cross-entropy of the refusal responses of harmful prompts.
Every `reextract_every` steps the directions are re-extracted from the tuned model and blended,
v ← normalize(ema·v_base + (1 − ema)·v_fresh): v_harm and v_ref from the training prompts, v_harm_resp and
v_ref_resp from the mean of the first N response tokens of the examples' fixed answers, teacher-forced
(harmful completions, refusals, helpful answers, as the directions stage defines them); the layers are
re-selected by the HARC layer score (top K, K rising from `top_k_start` to `top_k_end` halfway
through). Unlike the subspace mode, confinement here is a property of the objective, not of the
parameterisation: `harc verify` measures it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from ..artifacts import now, provenance, stamp_schema, write_json
from ..capture.activations import CacheConfig, cache_residuals
from ..capture.forward import forward_batch, kl_divergence, response_logprobs, response_means
from ..capture.generate import judged_generations
from ..capture.judges import DEFAULT_JUDGE, Judge
from ..data.chat import ChatPrompt, formatter_for, left_pad, pad_token_id
from ..data.prompts import PromptSet
from ..directions.artifact import Directions
from ..directions.means import diff_in_means
from ..directions.selection import harc_layer_scores, top_layers
from ..errors import HarcError
from ..model.hooked import HarcModel, resid_hook_name
from .loop import TrainConfig, train_loop
from .maps import SCHEMA_VERSION

log = logging.getLogger(__name__)


def lora_targets(model: HarcModel) -> tuple[str, ...]:
    """The names of every linear projection inside the decoder blocks (q/k/v/o and MLP projections, or
    a family's fused ones such as Phi-3's `qkv_proj` and `gate_up_proj`), found from the modules rather
    than from a per-family list, so no projection silently goes untrained."""
    names = {
        name.rsplit(".", 1)[-1]
        for block in model.blocks
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    }
    if not names:
        raise HarcError(f"found no linear projections in the decoder blocks of {type(model.hf).__name__}")
    return tuple(sorted(names))


@dataclass(frozen=True)
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None  # None: every linear projection in the blocks
    margin: float = 0.3  # HARC code default (paper: 0.5)
    kl_weight: float = 10.0
    ce_weight: float = 1.0
    n_harmful: int = 3  # per micro-batch (paper: 6 + 4 + 2 on 7-8B models, scaled down for CPU)
    n_harmless: int = 2
    n_borderline: int = 1
    n_response: int = 32
    top_k_start: int = 2
    top_k_end: int = 4
    reextract_every: int = 20
    ema: float = 0.7
    harmful_prefill: str = "Sure, here is"  # elicits the harmful completions v_harm_resp is re-extracted on
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=60, lr=1e-4, warmup_steps=10, checkpoint_every=10, log_every=5
        )
    )
    batch_size: int = 8  # generation batches when building the data


def build_examples(
    model: HarcModel, sets: dict[str, PromptSet], work: Path, config: LoraConfig, judge: Judge = DEFAULT_JUDGE
) -> dict[str, list[ChatPrompt]]:
    """Chats with responses: harmful → the model's own refusal (or its most common refusal where it
    complied); harmless and borderline → the base model's own response (the KL retention target);
    compliance → the harmful prompts with the base model's prefilled completions that are not refusals
    (only for re-extracting v_harm_resp; absent when every one was refused)."""
    fmt = formatter_for(model)
    out = {}
    for name in ("harmful", "harmless", "borderline"):
        ps = sets.get(name)
        if ps is None or not len(ps):
            continue
        rows = judged_generations(
            model,
            ps,
            work / f"responses_{name}.json",
            judge,
            max_new_tokens=config.n_response,
            batch_size=config.batch_size,
            progress=False,
        )
        if name == "harmful":
            refusals = [tuple(r["response_ids"]) for r in rows if r["refusal"] and r["response_ids"]]
            if not refusals:
                raise HarcError(
                    "the base model refused none of the harmful training prompts: no refusal targets"
                )
            fallback = max(set(refusals), key=refusals.count)
            responses = [r["response_ids"] if r["refusal"] else list(fallback) for r in rows]
        else:
            responses = [r["response_ids"] or [model.tokenizer.eos_token_id] for r in rows]
        out[name] = fmt.format_many(ps.texts, responses)
    if "harmful" in out:
        rows = judged_generations(
            model,
            sets["harmful"],
            work / "responses_harmful_prefill.json",
            judge,
            max_new_tokens=config.n_response,
            batch_size=config.batch_size,
            prefill=config.harmful_prefill,
            progress=False,
        )
        complied = [(r["prompt"], r["response_ids"]) for r in rows if not r["refusal"]]
        if complied:
            out["compliance"] = fmt.format_many([p for p, _ in complied], [ids for _, ids in complied])
    return out


def _forward(model: HarcModel, chats: Sequence[ChatPrompt], slots: Sequence[int], n_response: int):
    """Logits (with gradients) and, per slot, residuals at t_inst, t_post and the mean of the first
    response tokens, teacher-forced on the chats' responses."""
    batch = left_pad(chats, pad_token_id(model.tokenizer))
    seen = {}
    hooks = [(resid_hook_name(s, model.n_layers), lambda r, site, s=s: seen.__setitem__(s, r)) for s in slots]
    logits = forward_batch(model, batch, hooks, logits="all", grad=True)
    rows = torch.arange(len(chats))
    off = batch.offset
    t_inst = off + torch.tensor([c.t_inst for c in chats])
    t_post = off + torch.tensor([c.t_post for c in chats])
    weights = torch.zeros(batch.input_ids.shape)
    for b, c in enumerate(chats):
        pos = torch.tensor(c.response_positions[:n_response]) + off[b]
        weights[b, pos] = 1.0 / len(pos)

    def features(h: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # on h's device (a device map spreads them)
        rows_h, w = rows.to(h.device), weights.to(h.device)
        mean = torch.einsum("bt,btd->bd", w, h.float())  # float32 whatever the compute dtype
        return h[rows_h, t_inst.to(h.device)], h[rows_h, t_post.to(h.device)], mean

    feats = {s: features(h) for s, h in seen.items()}
    return logits, feats, batch


def direction_hinges(feats, d: Directions, slots: Sequence[int], harmful: bool, margin: float) -> Tensor:
    """HARC's hinges on the cosines of (t_inst, t_post, response mean) with (v_harm, v_ref, v_harm_resp,
    v_ref_resp) at each slot: harmful examples pushed above `margin`, the others below 0."""
    total = 0.0
    for s in slots:
        h_inst, h_post, h_resp = feats[s]
        for h, name in (
            (h_inst, "v_harm"),
            (h_post, "v_ref"),
            (h_resp, "v_harm_resp"),
            (h_resp, "v_ref_resp"),
        ):
            c = torch.nn.functional.cosine_similarity(h.float(), d.unit(name, s).to(h.device)[None], dim=-1)
            total = total + (torch.relu(margin - c).mean() if harmful else torch.relu(c).mean())
    return total


class LoraObjective:
    """The HARC LoRA loss at one step (see the module docstring), with the state it carries between
    steps: the current (EMA-blended) directions, the current HARC layers and the re-selection history."""

    def __init__(self, model: HarcModel, peft_model, d: Directions, examples, train_prompts, config):
        self.model, self.peft_model, self.base_d, self.examples = model, peft_model, d, examples
        self.train_prompts, self.config = train_prompts, config
        self.d = d
        self.slots = top_layers(harc_layer_scores(d), d.layers, config.top_k_start)
        self.history: list[dict] = []

    def reextract(self, step: int) -> None:
        """Blend fresh prompt-side directions of the tuned model into the base ones and re-select layers."""
        cfg, d = self.config, self.base_d
        fresh = _prompt_directions(self.model, self.train_prompts)
        fresh |= _response_directions(self.model, self.examples, d.layers, cfg.n_response)
        blended = {}
        for name in fresh:
            mix = cfg.ema * d.vectors[name] + (1 - cfg.ema) * fresh[name]
            blended[name] = mix / mix.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.d = replace(d, vectors={**d.vectors, **blended})
        k = cfg.top_k_start if step < cfg.train.steps // 2 else cfg.top_k_end
        self.slots = top_layers(harc_layer_scores(self.d), d.layers, k)
        self.history.append({"step": step, "slots": self.slots, "reextracted": sorted(fresh)})

    def __call__(self, step: int, gen: torch.Generator) -> tuple[Tensor, dict]:
        cfg = self.config
        due = step > 0 and step % cfg.reextract_every == 0
        if due and (not self.history or self.history[-1]["step"] != step):
            with torch.no_grad():
                self.reextract(step)
        parts, total = {}, torch.zeros((), device=self.model.device)
        for name, n in (
            ("harmful", cfg.n_harmful),
            ("harmless", cfg.n_harmless),
            ("borderline", cfg.n_borderline),
        ):
            pool = self.examples.get(name)
            if not pool or n == 0:
                continue
            chats = [pool[int(i)] for i in torch.randint(len(pool), (n,), generator=gen)]
            logits, feats, batch = _forward(self.model, chats, self.slots, cfg.n_response)
            hinge = direction_hinges(feats, self.d, self.slots, name == "harmful", cfg.margin)
            parts[f"hinge_{name}"] = float(hinge.detach())
            tuned_lp = response_logprobs(logits, chats, batch)
            if name == "harmful":
                term = self._refusal_ce(tuned_lp, chats)
                parts["ce"] = float(term.detach())
                total = total + hinge + cfg.ce_weight * term
            else:
                term = self._retention_kl(tuned_lp, chats, batch)
                parts[f"kl_{name}"] = float(term.detach())
                total = total + hinge + cfg.kl_weight * term
        return total, parts

    def _refusal_ce(self, tuned_lp, chats) -> Tensor:
        """Cross-entropy of the refusal responses of harmful prompts."""
        return torch.stack(
            [
                -lp.gather(1, torch.tensor(c.response_ids, device=lp.device)[:, None]).mean()
                for lp, c in zip(tuned_lp, chats, strict=True)
            ]
        ).mean()

    def _retention_kl(self, tuned_lp, chats, batch) -> Tensor:
        """KL(base ‖ tuned) over the response tokens, the base being the same model with the adapter off."""
        with self.peft_model.disable_adapter():
            base_logits = forward_batch(self.model, batch, logits="all")
        base_lp = response_logprobs(base_logits, chats, batch)
        return torch.stack(
            [kl_divergence(b, t).mean() for b, t in zip(base_lp, tuned_lp, strict=True)]
        ).mean()


def trainable_lora(model: HarcModel, config, targets: Sequence[str]):
    """`model.hf` wrapped in fresh LoRA adapters (rank `config.r`, `config.alpha`, `config.dropout`) on
    `targets`, only the adapters trainable. Their random A matrices come from `config.train.seed` (the
    global generator is left as it was): the same initial adapter in every run and every data-parallel
    process. Shared by the LoRA mode and the training-time baselines."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(targets),
        bias="none",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.train.seed)
        peft_model = get_peft_model(model.hf, peft_config)
    model.hf.requires_grad_(False)
    for n, p in peft_model.named_parameters():
        p.requires_grad_("lora_" in n)
    return peft_model


@contextlib.contextmanager
def activation_checkpointing(model: HarcModel, enabled: bool = True):
    """Train through `model` with Hugging Face's activation checkpointing (non-reentrant): each decoder
    block's activations are recomputed in the backward pass instead of kept, which bounds the memory of
    long answers and large models for about one more forward pass per step. It acts while the blocks
    are in training mode, as `train_loop` puts them; the package's residual hooks sit on the blocks,
    outside the recomputed part, so they run once. A runtime setting like the device: results are the
    same with it, so it is no part of any run's settings."""
    if not enabled:
        yield
        return
    model.hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        model.hf.activation_checkpointing_disable()


def train_lora(
    model: HarcModel,
    d: Directions,
    sets: dict[str, PromptSet],
    out_dir: str | Path,
    config: LoraConfig = LoraConfig(),
    judge: Judge = DEFAULT_JUDGE,
    progress: bool = True,
):
    """Train a LoRA adapter with the HARC objective; saves it to `out_dir/adapter` (peft format) with
    `out_dir/coupling.json`, and returns that path. `model` is restored to its base weights on return;
    use `lora_adapter(model, path)` to run with the adapter."""
    if not d.has("v_harm_resp"):
        raise HarcError("the LoRA mode needs response directions (v_harm_resp, v_ref_resp) in the artifact")
    d.check_model(model)
    out_dir = Path(out_dir)
    examples = build_examples(model, sets, out_dir / "work", config, judge)
    if "harmful" not in examples or "harmless" not in examples:
        raise HarcError("the LoRA mode needs harmful and harmless training prompts")
    targets = config.target_modules or lora_targets(model)
    peft_model = trainable_lora(model, config, targets)
    objective = LoraObjective(model, peft_model, d, examples, sets["harmful"] + sets["harmless"], config)
    try:
        rows = train_loop(
            peft_model, objective, config.train, out_dir, progress=progress, settings=asdict(config)
        )
        peft_model.save_pretrained(out_dir / "adapter")
    finally:
        peft_model.unload()  # back to the original modules: the base model is untouched
        model.hf.requires_grad_(False)
    meta = {
        "kind": "lora",
        "mode": "lora",
        "config": asdict(config),
        "target_modules": list(targets),
        "model": model.name,
        "model_fingerprint": model.fingerprint,
        "template_hash": d.meta.get("template_hash"),
        "final_slots": objective.slots,  # the final HARC layers (LoRA itself changes every layer)
        "reselection": objective.history,
        "n_examples": {k: len(v) for k, v in examples.items()},
        "final_losses": rows[-1] if rows else None,
        "trained": now(),
        "provenance": provenance(model),
    }
    write_json(out_dir / "coupling.json", stamp_schema(meta, "coupling", SCHEMA_VERSION))
    write_json(out_dir / "train_summary.json", {"log": rows, "meta": meta})
    return out_dir / "adapter"


def _prompt_directions(model: HarcModel, prompts: PromptSet) -> dict[str, Tensor]:
    """Fresh unit v_harm (t_inst) and v_ref (t_post) per slot from the current (tuned) model."""
    acts = cache_residuals(
        model, prompts, config=CacheConfig(positions=("t_inst", "t_post"), batch_size=16), progress=False
    )
    mask = torch.tensor([lab == "harmful" for lab in acts.meta["labels"]])
    out = {}
    for name, j in (("v_harm", 0), ("v_ref", 1)):
        v = diff_in_means(acts.resid[mask, :, j], acts.resid[~mask, :, j])
        out[name] = (v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float()
    return out


def _response_directions(
    model: HarcModel, examples: dict[str, list[ChatPrompt]], slots: Sequence[int], n_response: int
) -> dict[str, Tensor]:
    """Fresh unit v_ref_resp (refusals − helpful answers) and, where there are harmful completions,
    v_harm_resp (completions − helpful answers) per slot, from the mean residual over the first
    `n_response` answer tokens of the examples, teacher-forced through the current (tuned) model."""
    if not examples.get("harmful") or not examples.get("harmless"):
        return {}
    helpful = response_means(model, examples["harmless"], slots, n_response)
    out = {}
    for name, key in (("v_ref_resp", "harmful"), ("v_harm_resp", "compliance")):
        if examples.get(key):
            v = diff_in_means(response_means(model, examples[key], slots, n_response), helpful)
            out[name] = (v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float()
    return out


@contextlib.contextmanager
def lora_adapter(model: HarcModel, adapter_dir: str | Path):
    """Load a LoRA adapter (ours or any peft adapter for this base model) into `model` for the block;
    yields the peft model (use `.disable_adapter()` for the base). The base weights are restored on exit."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise HarcError(f"{adapter_dir} is not a peft adapter directory (no adapter_config.json)")
    peft_model = PeftModel.from_pretrained(model.hf, str(adapter_dir))
    peft_model.eval()
    try:
        yield peft_model
    finally:
        peft_model.unload()  # removes the LoRA layers, leaving the original modules
