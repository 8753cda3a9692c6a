"""Training-time safety baselines (METHOD.md §7), each a LoRA adapter (peft) on every linear projection
of the decoder blocks, trained on the training split only:

- `sft` (safety SFT): teacher-forced cross-entropy on the response tokens of (unsafe prompt → refusal)
  plus `retain_weight` × the same on (safe prompt → the base model's own greedy answer).
- `dpo` (Rafailov et al. 2023): on unsafe prompts, the refusal preferred over the model's own compliant
  completion; −log σ(β[(log π(y_r) − log π₀(y_r)) − (log π(y_c) − log π₀(y_c))]) on summed response
  log-probs, the reference π₀ being the same model with the adapter disabled.
- `circuit_breakers` (representation rerouting, Zou et al. 2024): at the `depths` slots, on unsafe prompts
  with the model's own compliant completions, relu(cos(h, h₀)) over the span (t_inst onwards: what
  follows the shared template prefix), pushing the tuned residual h orthogonal to the frozen one h₀; on
  safe prompts with the base answers, ‖h − h₀‖₂ over every token. Loss c_rr·rerouting + c_ret·retain
  with the reference code's schedule: t = step / (2·steps), c_rr = cb_alpha·(1 − t), c_ret = cb_alpha·t.
- `repbend` (Yousefpour et al. 2025, representation bending): at the `depths` slots, safe residuals kept
  close (½ mean ‖h_s − h₀_s‖ / ‖h₀_s‖, every token), unsafe residuals over the span pushed away from
  their frozen values, `bend_weight`·relu(`bend_distance` − ‖h_u − h₀_u‖ / ‖h₀_u‖), unsafe
  representations drawn together (`cluster_weight`·(1 − mean pairwise cosine of the per-example span
  means)), plus `kl_weight`·KL(base ‖ tuned) over the safe response tokens (METHOD.md: "plus KL on
  retain data"). Two departures from the paper's form, which pushes by a negative absolute distance:
  the push is a hinge, so the objective has a floor and cannot be won by blowing the unsafe residuals
  up without limit; and distances are relative to ‖h₀‖, so one set of weights means the same on models
  whose residual norms differ by orders of magnitude.

Data, built offline from the training split and cached (`data_dir`, keyed on the model, prompts,
judge and generation settings): unsafe prompts (`unsafe_sets`) get a refusal target (the model's own
greedy answer where the judge calls it a refusal, else `refusal`) and a compliant completion (the
model's own greedy continuation of `prefill`, kept where the judge says it complied; all of them if
none did); safe prompts (`safe_sets`) get the base model's own greedy answer.

LoRA's B matrices start at zero, where tuned and frozen residuals coincide and the representation
losses (a cosine and distances from h₀) are stationary: their gradient is exactly zero, and a
deterministic float32 run would never move. CB and RepBend therefore start B at N(0, `init_std`²).

Hyperparameters live in `TrainingBaselineConfig` (CPU-sized defaults; the paper-scale values belong
to a preset). Train with `train_baseline`; open the result with `baseline_variant`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from ..artifacts import cached_json, json_digest, now, provenance, stamp_schema
from ..capture.forward import StopForward, forward_batch, kl_divergence, response_logprobs
from ..capture.generate import judged_generations
from ..capture.judges import DEFAULT_JUDGE, Judge
from ..coupling.loop import TrainConfig, train_loop
from ..coupling.lora import lora_adapter, lora_targets, trainable_lora
from ..data.chat import Batch, ChatPrompt, formatter_for, left_pad, pad_token_id
from ..data.prompts import PromptSet
from ..errors import HarcError
from ..model.edits import Variant
from ..model.hooked import HarcModel, resid_hook_name

log = logging.getLogger(__name__)

TRAINING_METHODS = ("sft", "dpo", "circuit_breakers", "repbend")
REFUSAL_TEXT = "I'm sorry, but I can't help with that request."
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class TrainingBaselineConfig:
    """Every training-time baseline's hyperparameters, in one place (see the module docstring).

    LoRA: rank `r`, `alpha`, `dropout`, `target_modules` (None: every linear projection in the blocks).
    Data: `n_response` tokens per generated answer or completion, `prefill` starting the compliant
    completions, `refusal` the fallback refusal target, `unsafe_sets` / `safe_sets` the training-split
    groups used, `batch_size` for generation. Steps: `n_unsafe` + `n_safe` examples per micro-batch
    (a pool no larger is used whole). SFT: `retain_weight`. DPO: `beta` (the paper's 0.1). CB and
    RepBend: `depths` (relative depths of the target slots; CB's Llama-3-8B layers 10 and 20 of 32),
    `init_std` of B; CB: `cb_alpha` (the reference code's 10); RepBend: `bend_weight`, `bend_distance`,
    `cluster_weight`, `kl_weight`. `train`: the loop (shared by all four).

    CPU-sized defaults: rank 8, 40 steps of 4 + 4 examples. The CB paper trains r 16, α 16, lr 1e-4,
    150 steps of 16; HARC's own LoRA r 32, α 64."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    n_response: int = 32
    prefill: str = "Sure, here is"
    refusal: str = REFUSAL_TEXT
    unsafe_sets: tuple[str, ...] = ("harmful",)
    safe_sets: tuple[str, ...] = ("harmless", "borderline")
    batch_size: int = 8
    n_unsafe: int = 4
    n_safe: int = 4
    retain_weight: float = 1.0
    beta: float = 0.1
    depths: tuple[float, ...] = (0.3, 0.6)
    init_std: float = 1e-3
    cb_alpha: float = 10.0
    bend_weight: float = 1.0
    bend_distance: float = 1.0
    cluster_weight: float = 0.5
    kl_weight: float = 1.0
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=40, lr=2e-4, warmup_steps=5, checkpoint_every=10, log_every=5
        )
    )

    def __post_init__(self):
        if self.r < 1 or self.n_response < 1 or self.n_unsafe < 1 or self.n_safe < 0 or self.beta <= 0:
            raise HarcError("r, n_response, n_unsafe and beta must be positive, n_safe non-negative")
        if not self.depths or not all(0 <= d <= 1 for d in self.depths):
            raise HarcError(f"depths must be relative depths in [0, 1], got {self.depths}")
        if not self.unsafe_sets:
            raise HarcError("unsafe_sets must name at least one training group")


def target_slots(n_layers: int, depths: Sequence[float]) -> tuple[int, ...]:
    """Residual slots (block inputs, 1..n_layers) at the given relative depths, deduplicated."""
    return tuple(sorted({min(n_layers, max(1, round(d * n_layers))) for d in depths}))


@dataclass(frozen=True)
class BaselineData:
    """Training chats: `refusal[i]` and `compliance[i]` answer the same unsafe prompt (a DPO pair);
    `retain` are safe prompts with the base model's own answers."""

    refusal: list[ChatPrompt]
    compliance: list[ChatPrompt]
    retain: list[ChatPrompt]

    def counts(self) -> dict[str, int]:
        """Number of chats of each kind."""
        return {"refusal": len(self.refusal), "compliance": len(self.compliance), "retain": len(self.retain)}


def _joined(sets: dict[str, PromptSet], names: Sequence[str]) -> PromptSet | None:
    present = [sets[n] for n in names if n in sets and len(sets[n])]
    if not present:
        return None
    out = present[0]
    for ps in present[1:]:
        out = out + ps
    return out


def build_baseline_data(
    model: HarcModel,
    sets: dict[str, PromptSet],
    data_dir: str | Path,
    config: TrainingBaselineConfig,
    judge: Judge = DEFAULT_JUDGE,
) -> BaselineData:
    """The chats every training-time baseline trains on (module docstring), generated greedily by the
    base model and cached in `data_dir` under a key of everything they depend on."""
    unsafe, safe = _joined(sets, config.unsafe_sets), _joined(sets, config.safe_sets)
    if unsafe is None:
        raise HarcError(f"no unsafe training prompts in {sorted(sets)} (unsafe_sets={config.unsafe_sets})")
    key = {
        "fingerprint": model.fingerprint,
        "n_response": config.n_response,
        "prefill": config.prefill,
        "judge": repr(judge),
        "unsafe": unsafe.ids,
        "safe": safe.ids if safe is not None else [],
    }
    tag = json_digest(key)[:12]
    data_dir = Path(data_dir)

    def answers(ps: PromptSet, kind: str, prefill: str | None = None) -> list[dict]:
        return judged_generations(
            model,
            ps,
            data_dir / f"{kind}-{tag}.json",
            judge,
            max_new_tokens=config.n_response,
            batch_size=config.batch_size,
            prefill=prefill,
            progress=False,
        )

    fmt = formatter_for(model)
    fallback = tuple(model.tokenizer(config.refusal, add_special_tokens=False)["input_ids"])
    own = answers(unsafe, "unsafe_greedy")
    refusals = [tuple(r["response_ids"]) if r["refusal"] and r["response_ids"] else fallback for r in own]
    forced = answers(unsafe, "unsafe_prefilled", config.prefill)
    keep = [i for i, r in enumerate(forced) if not r["refusal"]]
    if not keep:
        log.warning("every prefilled completion was judged a refusal; training on all of them")
        keep = list(range(len(forced)))
    texts = [unsafe.texts[i] for i in keep]
    retain = []
    if safe is not None:
        rows = answers(safe, "safe_greedy")
        eos = model.tokenizer.eos_token_id
        retain = fmt.format_many(safe.texts, [r["response_ids"] or [eos] for r in rows], ids=safe.ids)
    return BaselineData(
        refusal=fmt.format_many(texts, [refusals[i] for i in keep]),
        compliance=fmt.format_many(texts, [forced[i]["response_ids"] for i in keep]),
        retain=retain,
    )


def _draw(n_pool: int, n: int, gen: torch.Generator) -> list[int]:
    """`n` distinct indices of a pool (all of it when the pool is no larger): a fixed batch overfits."""
    return [int(i) for i in torch.randperm(n_pool, generator=gen)[: min(n, n_pool)]]


def _token_ce(logits: Tensor, chats: Sequence[ChatPrompt], batch: Batch) -> Tensor:
    """Per-chat mean cross-entropy of the response tokens, teacher-forced; [chat]."""
    lps = response_logprobs(logits, chats, batch)
    return torch.stack(
        [
            -lp.gather(1, torch.tensor(c.response_ids, device=lp.device)[:, None]).mean()
            for lp, c in zip(lps, chats, strict=True)
        ]
    )


def _sequence_logprob(logits: Tensor, chats: Sequence[ChatPrompt], batch: Batch) -> Tensor:
    """Per-chat summed log-probability of the response; [chat]."""
    lps = response_logprobs(logits, chats, batch)
    return torch.stack(
        [
            lp.gather(1, torch.tensor(c.response_ids, device=lp.device)[:, None]).sum()
            for lp, c in zip(lps, chats, strict=True)
        ]
    )


def _residuals(
    model: HarcModel, batch: Batch, slots: Sequence[int], *, grad: bool, logits: str | None = None
) -> tuple[dict[int, Tensor], Tensor | None]:
    """Residuals [batch, pos, d_model] at `slots` (and the logits if asked; without them the pass
    stops at the last slot)."""
    seen: dict[int, Tensor] = {}
    last = max(slots)

    def hook(r, site, s):
        seen[s] = r
        if s == last and logits is None:
            raise StopForward

    hooks = [(resid_hook_name(s, model.n_layers), lambda r, site, s=s: hook(r, site, s)) for s in slots]
    out = forward_batch(model, batch, hooks, logits=logits, grad=grad)
    return seen, out


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of `x` [batch, pos] over the positions where `mask` is set."""
    mask = mask.to(x.device, x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def _relative_distance(h: Tensor, h0: Tensor) -> Tensor:
    """‖h − h₀‖ / ‖h₀‖ per token [batch, pos], in float32."""
    h, h0 = h.float(), h0.float()
    return (h - h0).norm(dim=-1) / h0.norm(dim=-1).clamp_min(1e-6)


class _Objective:
    """A baseline's loss at one step (`train_loop`'s LossFn), with the model, its peft wrapper (whose
    `disable_adapter()` gives the frozen base), the data and the config."""

    def __init__(self, model: HarcModel, peft_model, data: BaselineData, config: TrainingBaselineConfig):
        self.model, self.peft_model, self.data, self.config = model, peft_model, data, config
        self.pad = pad_token_id(model.tokenizer)
        self.slots = target_slots(model.n_layers, config.depths)

    def pick(self, pool: list[ChatPrompt], n: int, gen: torch.Generator) -> list[ChatPrompt]:
        """`n` chats drawn without replacement from `pool`."""
        return [pool[i] for i in _draw(len(pool), n, gen)]

    def frozen(self, batch: Batch, logits: str | None = None):
        """Residuals (and logits) of the base model: the adapter disabled, no gradient."""
        with self.peft_model.disable_adapter():
            return _residuals(self.model, batch, self.slots, grad=False, logits=logits)


class _SFT(_Objective):
    """Safety SFT: refusal cross-entropy plus retain cross-entropy."""

    def __call__(self, step: int, gen: torch.Generator) -> tuple[Tensor, dict]:
        cfg = self.config
        refuse = self.pick(self.data.refusal, cfg.n_unsafe, gen)
        retain = self.pick(self.data.retain, cfg.n_safe, gen) if self.data.retain else []
        chats = refuse + retain
        batch = left_pad(chats, self.pad)
        ce = _token_ce(forward_batch(self.model, batch, logits="all", grad=True), chats, batch)
        refusal_ce = ce[: len(refuse)].mean()
        retain_ce = ce[len(refuse) :].mean() if retain else torch.zeros((), device=ce.device)
        parts = {"ce_refusal": float(refusal_ce.detach()), "ce_retain": float(retain_ce.detach())}
        return refusal_ce + cfg.retain_weight * retain_ce, parts


class _DPO(_Objective):
    """DPO on (refusal ≻ own compliant completion) pairs, reference = adapter off."""

    def __call__(self, step: int, gen: torch.Generator) -> tuple[Tensor, dict]:
        idx = _draw(len(self.data.refusal), self.config.n_unsafe, gen)
        chats = [self.data.refusal[i] for i in idx] + [self.data.compliance[i] for i in idx]
        batch = left_pad(chats, self.pad)
        policy = _sequence_logprob(forward_batch(self.model, batch, logits="all", grad=True), chats, batch)
        with self.peft_model.disable_adapter():
            ref = _sequence_logprob(forward_batch(self.model, batch, logits="all"), chats, batch)
        n = len(idx)
        ratio = policy - ref.detach()
        margin = self.config.beta * (ratio[:n] - ratio[n:])
        loss = -F.logsigmoid(margin).mean()
        parts = {
            "reward_margin": float(margin.mean().detach()),
            "reward_accuracy": float((margin > 0).float().mean()),
        }
        return loss, parts


class _CircuitBreakers(_Objective):
    """Representation rerouting with the reference code's coefficient schedule."""

    def __call__(self, step: int, gen: torch.Generator) -> tuple[Tensor, dict]:
        cfg = self.config
        t = step / (2 * cfg.train.steps)
        c_rr, c_ret = cfg.cb_alpha * (1 - t), cfg.cb_alpha * t
        harm = left_pad(self.pick(self.data.compliance, cfg.n_unsafe, gen), self.pad)
        tuned, _ = _residuals(self.model, harm, self.slots, grad=True)
        base, _ = self.frozen(harm)
        span = harm.span_role >= 0
        reroute = sum(
            _masked_mean(torch.relu(F.cosine_similarity(tuned[s].float(), base[s].float(), dim=-1)), span)
            for s in self.slots
        )
        retain = torch.zeros((), device=self.model.device)
        if self.data.retain and cfg.n_safe:
            safe = left_pad(self.pick(self.data.retain, cfg.n_safe, gen), self.pad)
            tuned_s, _ = _residuals(self.model, safe, self.slots, grad=True)
            base_s, _ = self.frozen(safe)
            retain = sum(
                _masked_mean((tuned_s[s].float() - base_s[s].float()).norm(dim=-1), safe.attention_mask)
                for s in self.slots
            )
        parts = {"reroute": float(reroute.detach()), "retain": float(retain.detach()), "c_reroute": c_rr}
        return c_rr * reroute + c_ret * retain, parts


class _RepBend(_Objective):
    """Representation bending (module docstring)."""

    def __call__(self, step: int, gen: torch.Generator) -> tuple[Tensor, dict]:
        cfg = self.config
        harm = left_pad(self.pick(self.data.compliance, cfg.n_unsafe, gen), self.pad)
        tuned, _ = _residuals(self.model, harm, self.slots, grad=True)
        base, _ = self.frozen(harm)
        span = harm.span_role >= 0
        bend = cluster = torch.zeros((), device=self.model.device)
        for s in self.slots:
            h = tuned[s].float()
            rel = _relative_distance(h, base[s])
            bend = bend + _masked_mean(torch.relu(cfg.bend_distance - rel), span)
            if h.shape[0] > 1:
                w = span.to(h.device, h.dtype)
                means = F.normalize((h * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0), dim=-1)
                cos = means @ means.T
                n = cos.shape[0]
                cluster = cluster + 1 - (cos.sum() - cos.diagonal().sum()) / (n * (n - 1))
        total = cfg.bend_weight * bend + cfg.cluster_weight * cluster
        parts = {"bend": float(bend.detach()), "cluster": float(cluster.detach())}
        if self.data.retain and cfg.n_safe:
            chats = self.pick(self.data.retain, cfg.n_safe, gen)
            safe = left_pad(chats, self.pad)
            tuned_s, logits = _residuals(self.model, safe, self.slots, grad=True, logits="all")
            base_s, base_logits = self.frozen(safe, logits="all")
            retain = sum(
                0.5 * _masked_mean(_relative_distance(tuned_s[s], base_s[s]), safe.attention_mask)
                for s in self.slots
            )
            pairs = zip(
                response_logprobs(base_logits, chats, safe),
                response_logprobs(logits, chats, safe),
                strict=True,
            )
            kl = torch.stack([kl_divergence(b, t).mean() for b, t in pairs]).mean()
            total = total + retain + cfg.kl_weight * kl
            parts |= {"retain": float(retain.detach()), "kl": float(kl.detach())}
        return total, parts


OBJECTIVES = {"sft": _SFT, "dpo": _DPO, "circuit_breakers": _CircuitBreakers, "repbend": _RepBend}


def _needs(method: str, data: BaselineData) -> None:
    """Refuse data a method cannot train on."""
    if not data.refusal:
        raise HarcError(f"{method}: no unsafe training prompts")
    if method in ("circuit_breakers", "repbend", "sft") and not data.retain:
        log.warning("%s: no safe training prompts; training without a retain term", method)


def train_baseline(
    model: HarcModel,
    method: str,
    sets: dict[str, PromptSet],
    out_dir: str | Path,
    config: TrainingBaselineConfig | None = None,
    judge: Judge = DEFAULT_JUDGE,
    *,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train one training-time baseline (`method` in TRAINING_METHODS) on the training `sets`; saves
    the adapter to `out_dir/adapter` and returns the record written to `out_dir/baseline.json`
    (adapter path, trainable_parameters, training_seconds, example counts, final losses). A finished
    run under the same key is read back; an interrupted one resumes from its checkpoint. `data_dir`
    (default `out_dir/data`) caches the generated training answers, so several methods can share them.
    `model` is back to its base weights on return; open the adapter with `baseline_variant`."""
    if method not in OBJECTIVES:
        raise HarcError(
            f"unknown training-time baseline {method!r}: choose from {', '.join(TRAINING_METHODS)}"
        )
    config = config or TrainingBaselineConfig()
    out_dir = Path(out_dir)
    data_dir = Path(data_dir) if data_dir is not None else out_dir / "data"
    key = {
        "method": method,
        "config": asdict(config),
        "fingerprint": model.fingerprint,
        "sets": {k: sets[k].ids for k in (*config.unsafe_sets, *config.safe_sets) if k in sets},
        "judge": repr(judge),
    }

    def compute() -> dict:
        start = time.perf_counter()
        data = build_baseline_data(model, sets, data_dir, config, judge)
        _needs(method, data)
        data_s = time.perf_counter() - start
        targets = config.target_modules or lora_targets(model)
        start = time.perf_counter()
        peft_model = trainable_lora(model, config, targets)
        try:
            lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
            if method in ("circuit_breakers", "repbend"):
                _break_symmetry(lora, config)
            objective = OBJECTIVES[method](model, peft_model, data, config)
            rows = train_loop(
                peft_model,
                objective,
                config.train,
                out_dir / "train",
                progress=progress,
                settings={"method": method, **asdict(config)},
            )
            peft_model.save_pretrained(out_dir / "adapter")
        finally:
            peft_model.unload()  # back to the original modules: the base weights are untouched
            model.hf.requires_grad_(False)
        meta = {
            "kind": "lora",
            "method": method,
            "adapter": str(out_dir / "adapter"),
            "trainable_parameters": sum(p.numel() for p in lora.values()),
            "training_seconds": round(time.perf_counter() - start, 1),
            "data_seconds": round(data_s, 1),  # generating the training answers (0 when cached)
            "target_modules": list(targets),
            "slots": list(objective.slots) if method in ("circuit_breakers", "repbend") else [],
            "n_examples": data.counts(),
            "final_losses": rows[-1] if rows else None,
            "trained": now(),
            "provenance": provenance(model, judge=repr(judge)),
        }
        return stamp_schema(meta, "training_baseline", SCHEMA_VERSION)

    record = cached_json(out_dir / "baseline.json", compute, key=key)
    if not (Path(record["adapter"]) / "adapter_config.json").is_file():
        raise HarcError(
            f"{out_dir}/baseline.json names an adapter that is gone; delete the folder to retrain"
        )
    return record


def _break_symmetry(lora: dict[str, Tensor], config: TrainingBaselineConfig) -> None:
    """B ~ N(0, init_std²), seeded: at B = 0 the representation losses have zero gradient."""
    gen = torch.Generator().manual_seed(config.train.seed)
    with torch.no_grad():
        for name, p in lora.items():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * config.init_std)


class _AdapterSwitch:
    """Switches a loaded adapter's layers on for a block and off after it; re-entrant (a nested use of
    the same Variant keeps it on until the outermost block ends)."""

    def __init__(self, peft_model):
        self.peft_model, self.depth = peft_model, 0

    @contextlib.contextmanager
    def on(self) -> Iterator[None]:
        """The adapter on for the block."""
        if self.depth == 0:
            self.peft_model.base_model.enable_adapter_layers()
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.peft_model.base_model.disable_adapter_layers()


@contextlib.contextmanager
def baseline_variant(model: HarcModel, adapter_dir: str | Path, name: str = "lora") -> Iterator[Variant]:
    """Attach a trained adapter for the block and yield the Variant that runs with it. Outside that
    Variant's own context the adapter is switched off, so a plain `Variant()` in the same block (the
    base side of an evaluation) is the base model. On exit the adapter is removed: the model's modules
    and weights are the ones it had before."""
    with lora_adapter(model, adapter_dir) as peft_model:
        peft_model.base_model.disable_adapter_layers()
        yield Variant(context=_AdapterSwitch(peft_model).on, name=name)
