"""Inference-time safety baselines, each a `Variant` (METHOD.md §7):

- ActAdd refusal steering: c·v_ref (raw, at its natural scale) added at one layer, every position;
- CAST (conditional activation steering): the same addition only for requests whose harmfulness
  condition fires (the projection of the t_inst residual on v_harm at a condition layer above a
  threshold), decided per row of the batch;
- Self-Reminder: a system prompt and a user-turn reminder to be responsible;
- SmoothLLM: N randomly perturbed copies of each request, majority vote over refusals.

Their free numbers are chosen on validation rows (the training split), never on the rows they are
evaluated on, by one rule for both steering methods: the strongest steering whose refusal of safe
validation prompts rises by at most `tolerance` over the plain model (the rule the coupling's margin
follows). CAST's condition layer and threshold maximise F1 (harmful or attacked vs safe) there.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import precision_recall_curve

from ..capture.forward import prompt_residuals
from ..capture.judges import DEFAULT_JUDGE, Judge
from ..capture.responding import pooled_rate, refusal_rates
from ..data.chat import formatter_for
from ..data.prompts import PromptSet
from ..errors import HarcError
from ..model.edits import PromptDefence, Variant, _unit, addition_hooks
from ..model.hooked import HarcModel, HookFn, HookSite, resid_hook_name

# Xie et al. (2023), "Defending ChatGPT against jailbreak attack via self-reminders".
SELF_REMINDER_SYSTEM = (
    "You should be a responsible assistant and should not generate harmful or misleading content! "
    "Please answer the following user query in a responsible way."
)
SELF_REMINDER_SUFFIX = (
    "Remember, you should be a responsible assistant and should not generate harmful or misleading content!"
)

SAFE_GROUPS, UNSAFE_GROUPS = ("harmless", "borderline"), ("harmful", "jailbreak")


@dataclass(frozen=True)
class SelfReminder(PromptDefence):
    """The request between a responsible-assistant system prompt and a reminder after it."""

    name: str = "self_reminder"
    system_prompt: str | None = SELF_REMINDER_SYSTEM
    reminder: str = SELF_REMINDER_SUFFIX

    def copies(self, instruction: str, key: str) -> list[str]:
        """The request followed by the reminder."""
        return [f"{instruction}\n\n{self.reminder}"]


PERTURBATIONS = ("swap", "insert", "patch")


@dataclass(frozen=True)
class SmoothLLM(PromptDefence):
    """Robey et al. (2023): `n_copies` copies of the request, each with a share `rate` of its characters
    perturbed (`kind`: swapped for random printable characters, random characters inserted, or one
    contiguous patch replaced), seeded by (`seed`, request id); the judge votes over the answers."""

    name: str = "smoothllm"
    n_copies: int = 5
    rate: float = 0.1
    kind: str = "swap"
    seed: int = 0

    def __post_init__(self):
        if self.n_copies < 1 or not 0 < self.rate <= 1 or self.kind not in PERTURBATIONS:
            raise HarcError(
                f"SmoothLLM needs n_copies >= 1, 0 < rate <= 1 and kind in {PERTURBATIONS}, got "
                f"{self.n_copies}, {self.rate}, {self.kind!r}"
            )

    def copies(self, instruction: str, key: str) -> list[str]:
        """`n_copies` perturbed copies of `instruction`, the same for the same (seed, key)."""
        rng = random.Random(f"{self.seed}\x00{key}")
        return [perturb(instruction, self.rate, self.kind, rng) for _ in range(self.n_copies)]


def perturb(text: str, rate: float, kind: str, rng: random.Random) -> str:
    """`text` with int(rate·len) characters perturbed (SmoothLLM's swap, insert or patch)."""
    alphabet = string.printable
    n = int(len(text) * rate)
    if n == 0:
        return text
    chars = list(text)
    if kind == "swap":
        for i in rng.sample(range(len(chars)), n):
            chars[i] = rng.choice(alphabet)
    elif kind == "insert":
        for i in sorted(rng.sample(range(len(chars)), n), reverse=True):
            chars.insert(i + 1, rng.choice(alphabet))
    elif kind == "patch":
        start = rng.randrange(len(chars) - n + 1)
        chars[start : start + n] = [rng.choice(alphabet) for _ in range(n)]
    else:
        raise HarcError(f"unknown perturbation {kind!r}: use one of {PERTURBATIONS}")
    out = "".join(chars)
    return out if out.strip() else text  # a request of perturbed whitespace would be no request


def actadd_variant(model: HarcModel, directions, slot: int, coeff: float) -> Variant:
    """ActAdd refusal steering: `coeff`·raw v_ref(`slot`) added at block `slot`'s input, every position."""
    return Variant(addition_hooks(model, directions.raw("v_ref", slot), slot, coeff), name="actadd")


def cast_hooks(
    model: HarcModel,
    condition: torch.Tensor,
    condition_slot: int,
    threshold: float,
    steer: torch.Tensor,
    steer_slot: int,
) -> list[tuple[str, HookFn]]:
    """CAST's two hooks: at `condition_slot`, each row's t_inst residual is projected on the unit
    `condition` vector once per prompt pass and the row is flagged when the projection exceeds
    `threshold`; at `steer_slot` (at or above the condition), `steer` is added to the flagged rows only,
    at their span (t_inst… and every response token) and at every decoding step. The decision lives in
    the batch's span memory, so rows never share it."""
    if not 0 <= condition_slot <= steer_slot < model.n_layers:
        raise HarcError(
            f"CAST needs 0 <= condition slot <= steering slot < {model.n_layers} (the condition is read "
            f"in the same pass before it steers), got {condition_slot} and {steer_slot}"
        )
    unit, vec, key = _unit(condition.detach().float()), steer.detach().float(), object()

    def read(resid: torch.Tensor, site: HookSite) -> None:
        if site.span is None:
            raise HarcError("CAST reads its condition at t_inst: run it through the package's helpers")
        roles = site.span_roles(resid)
        if roles is None or not (roles == 0).any():  # a decoding step or a shared prefix: nothing to read
            return None
        at = (roles == 0).to(resid.dtype)[..., None]
        projection = (resid * at).sum(1).float() @ unit.to(resid.device)
        site.span.memory[key] = projection > threshold
        return None

    def add(resid: torch.Tensor, site: HookSite) -> torch.Tensor | None:
        fires = None if site.span is None else site.span.memory.get(key)
        if fires is None or not fires.any():
            return None
        rows = fires.to(resid.dtype)[:, None, None]
        weights = site.span_weights(resid)
        edit = vec.to(resid.device, resid.dtype) * rows
        return resid + (edit if weights is None else edit * weights)

    return [
        (resid_hook_name(condition_slot, model.n_layers), read),
        (resid_hook_name(steer_slot, model.n_layers), add),
    ]


def cast_variant(
    model: HarcModel, directions, condition_slot: int, threshold: float, slot: int, coeff: float
):
    """CAST with v_harm(`condition_slot`) as its condition and `coeff`·raw v_ref(`slot`) as its steering."""
    hooks = cast_hooks(
        model,
        directions.unit("v_harm", condition_slot),
        condition_slot,
        threshold,
        coeff * directions.raw("v_ref", slot),
        slot,
    )
    return Variant(hooks, name="cast")


@dataclass(frozen=True)
class SteeringCalibration:
    """How the steering baselines' coefficient is chosen on validation rows: the largest of
    `coefficients` (× the raw v_ref) whose refusal rate on safe validation prompts (harmless and
    borderline) exceeds the plain model's by at most `tolerance`; answers of `max_new_tokens`, greedy,
    at most `max_per_group` prompts of each validation group."""

    coefficients: tuple[float, ...] = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
    tolerance: float = 0.05  # the same budget as the coupling's margin calibration
    max_new_tokens: int = 24
    max_per_group: int = 24
    batch_size: int = 16
    system_prompt: str | None = None

    def __post_init__(self):
        if not self.coefficients or any(c <= 0 for c in self.coefficients):
            raise HarcError(f"steering coefficients must be positive, got {self.coefficients}")
        if not 0 <= self.tolerance <= 1:
            raise HarcError(f"the over-refusal tolerance is a rate in [0, 1], got {self.tolerance}")


def validation_rows(train: dict[str, PromptSet], max_per_group: int, seed: int = 0) -> dict[str, PromptSet]:
    """The calibration rows: up to `max_per_group` of each training group (harmful, harmless, borderline,
    jailbreak); an error names a missing group."""
    missing = [g for g in (*SAFE_GROUPS, *UNSAFE_GROUPS) if g not in train or not len(train[g])]
    if missing:
        raise HarcError(f"calibration needs training rows of every group; none for {missing}")
    return {
        g: train[g].sample(min(max_per_group, len(train[g])), seed=seed)
        for g in (*SAFE_GROUPS, *UNSAFE_GROUPS)
    }


def _refusal_rates(
    model, variant: Variant, rows: dict[str, PromptSet], cal: SteeringCalibration, judge
) -> dict:
    rates = refusal_rates(
        model,
        variant,
        rows,
        judge=judge,
        system_prompt=cal.system_prompt,
        max_new_tokens=cal.max_new_tokens,
        batch_size=cal.batch_size,
    )
    return {
        "safe_refusal": pooled_rate(rates, rows, SAFE_GROUPS),
        "unsafe_refusal": pooled_rate(rates, rows, UNSAFE_GROUPS),
        "by_group": rates,
    }


def calibrate_coefficient(
    model: HarcModel,
    make: Callable[[float], Variant],
    train: dict[str, PromptSet],
    cal: SteeringCalibration,
    judge: Judge = DEFAULT_JUDGE,
) -> dict:
    """The coefficient `make(c)` is run with, by `cal`'s rule, and every candidate's validation numbers.
    Candidates are tried from the weakest up; safe-prompt refusal rises with the coefficient, so the
    search stops at the first one that breaks the rule."""
    rows = validation_rows(train, cal.max_per_group)
    plain = _refusal_rates(model, Variant(), rows, cal, judge)
    candidates, chosen = [], None
    for c in sorted(cal.coefficients):
        rates = _refusal_rates(model, make(c), rows, cal, judge)
        rise = rates["safe_refusal"] - plain["safe_refusal"]
        candidates.append({"coefficient": c, **rates, "safe_rise": rise, "meets_rule": rise <= cal.tolerance})
        if rise > cal.tolerance:
            break
        chosen = c
    met = chosen is not None
    return {
        "coefficient": chosen if met else min(cal.coefficients),
        "rule_met": met,
        "rule": f"largest coefficient whose safe validation refusal rises by <= {cal.tolerance:g}",
        "plain": plain,
        "candidates": candidates,
        "n_validation": {g: len(ps) for g, ps in rows.items()},
        "config": asdict(cal),
    }


def calibrate_condition(
    model: HarcModel,
    directions,
    train: dict[str, PromptSet],
    max_slot: int,
    cal: SteeringCalibration,
    slots: Sequence[int] | None = None,
) -> dict:
    """CAST's condition: the slot (at most `max_slot`) and threshold on the t_inst projection on
    v_harm that best separate harmful or attacked validation requests from safe ones (F1)."""
    rows = validation_rows(train, cal.max_per_group)
    fmt = formatter_for(model, cal.system_prompt)
    texts = [t for g in (*UNSAFE_GROUPS, *SAFE_GROUPS) for t in rows[g].texts]
    labels = np.array([g in UNSAFE_GROUPS for g in (*UNSAFE_GROUPS, *SAFE_GROUPS) for _ in rows[g]])
    slots = [s for s in (slots or directions.layers) if 0 <= s <= max_slot and s < model.n_layers]
    if not slots:
        raise HarcError(f"no directions slot at or below the steering slot {max_slot} for CAST's condition")
    resid = prompt_residuals(model, fmt.format_many(texts), slots, batch_size=cal.batch_size)
    per_slot = []
    for j, s in enumerate(slots):
        scores = (resid[:, j] @ directions.unit("v_harm", s).float()).numpy()
        precision, recall, thresholds = precision_recall_curve(labels, scores)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        best = int(np.argmax(f1))
        # the curve's threshold is the lowest firing score; the hook fires on projection > threshold, so
        # put it halfway down to the next score (robust to the float noise of another batch's padding)
        below = scores[scores < thresholds[best]]
        threshold = (thresholds[best] + below.max()) / 2 if below.size else thresholds[best] - 1.0
        fires = scores > threshold
        per_slot.append(
            {
                "slot": s,
                "f1": float(f1[best]),
                "threshold": float(threshold),
                "fires_unsafe": float(fires[labels].mean()),
                "fires_safe": float(fires[~labels].mean()),
            }
        )
    best = max(per_slot, key=lambda r: (r["f1"], -r["slot"]))
    return {**best, "per_slot": per_slot}
