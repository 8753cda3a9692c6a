"""The subspace coupling's training data: plane coordinates of the template span (and of the model's
own first response tokens) under every condition, with no gradient through the model.

Conditions: plain harmful prompts, harmful prompts under white-box single-direction suppression (v_ref
or v_harm ablated in every block upstream of the attack slot), jailbreaks, and harmless and borderline
prompts. `plane_separability` says how well the plane alone tells them apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..capture.activations import CacheConfig, cache_residuals
from ..capture.forward import teacher_forced_residuals
from ..capture.generate import generate
from ..data.chat import formatter_for
from ..data.prompts import PromptSet
from ..directions.artifact import Directions
from ..model.edits import ablation_hooks
from ..model.hooked import HarcModel, HookFn
from ..plane.basis import plane_basis_matrix

HARMFUL_LIKE = ("harmful", "harmful_ablate_ref", "harmful_ablate_harm", "jailbreak")
HARMLESS_LIKE = ("harmless", "borderline")


def plane_coordinates_dataset(
    model: HarcModel,
    d: Directions,
    slots: tuple[int, ...],
    sets: dict[str, PromptSet],
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: bool = True,
    attack_slot: int | None = None,
    hooks: Sequence[tuple[str, HookFn]] = (),
) -> dict[str, Tensor]:
    """{condition: coords [prompt, slot, span position, 2]} in each slot's orthonormal plane basis.
    The white-box conditions ablate upstream of `attack_slot` (default: the first slot); `hooks` run in
    every condition (e.g. coupling maps already trained at shallower slots)."""
    bases = torch.stack([plane_basis_matrix(d, s) for s in slots])
    cfg = CacheConfig(
        layers=slots,
        positions=("t_inst", "post_instruction"),
        batch_size=batch_size,
        system_prompt=system_prompt,
    )
    out = {}
    for name, (ps, attack) in conditions(model, d, sets, min(slots) if attack_slot is None else attack_slot):
        acts = cache_residuals(model, ps, config=cfg, hooks=[*attack, *hooks], progress=progress)
        out[name] = torch.einsum("nlpd,ldk->nlpk", acts.resid, bases)
    return out


def conditions(model: HarcModel, d: Directions, sets: dict[str, PromptSet], attack_slot: int):
    """(condition, (prompts, attack hooks)) for every condition with prompts; the white-box ones ablate
    a direction in every block upstream of `attack_slot`."""
    conditions = {
        "harmful": (sets["harmful"], ()),
        "harmful_ablate_ref": (
            sets["harmful"],
            ablation_hooks(model, d.unit("v_ref", attack_slot), layers=range(attack_slot)),
        ),
        "harmful_ablate_harm": (
            sets["harmful"],
            ablation_hooks(model, d.unit("v_harm", attack_slot), layers=range(attack_slot)),
        ),
        "jailbreak": (sets.get("jailbreak"), ()),
        "harmless": (sets["harmless"], ()),
        "borderline": (sets.get("borderline"), ()),
    }
    return [(name, c) for name, c in conditions.items() if c[0] is not None and len(c[0]) > 0]


def response_coordinates_dataset(
    model: HarcModel,
    d: Directions,
    slot: int,
    sets: dict[str, PromptSet],
    n_tokens: int,
    attack_slot: int,
    batch_size: int = 16,
    system_prompt: str | None = None,
    progress: bool = True,
    hooks: Sequence[tuple[str, HookFn]] = (),
) -> dict[str, Tensor]:
    """{condition: coords [prompt, n_tokens, 2]} of the model's own first `n_tokens` response tokens at
    `slot` (greedy, generated and then read under the condition's attack and `hooks`); NaN past the end
    of a shorter response."""
    basis = plane_basis_matrix(d, slot).double()
    fmt = formatter_for(model, system_prompt)
    out = {}
    for name, (ps, attack) in conditions(model, d, sets, attack_slot):
        run_hooks = [*attack, *hooks]
        gens = generate(
            model,
            ps,
            max_new_tokens=n_tokens,
            batch_size=batch_size,
            hooks=run_hooks,
            system_prompt=system_prompt,
            progress=progress,
        )
        chats = fmt.format_many(ps.texts, [list(g.response_ids) for g in gens])
        forced = teacher_forced_residuals(model, chats, slot, hooks=run_hooks, batch_size=batch_size)
        coords = torch.full((len(chats), n_tokens, 2), float("nan"))
        for b, resid in enumerate(forced.response):
            head = resid[:n_tokens]
            coords[b, : head.shape[0]] = (head.double() @ basis).float()
        out[name] = coords
    return out


def plane_separability(coords: dict[str, Tensor], slots: tuple[int, ...], seed: int = 0) -> dict:
    """How well the plane alone tells each harmful-like condition from the harmless-like prompts, per slot
    and span position: cross-validated AUROC of a logistic regression on the 2-D coordinates (0.5 = the
    plane carries nothing to couple on). A position-wise map can only raise refusal where this is high."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    negatives = [coords[k] for k in HARMLESS_LIKE if k in coords]
    if not negatives:
        return {}
    neg = torch.cat(negatives)
    n_pos = neg.shape[2]
    # Span = t_inst, then the template suffix post_0 … post_{k-1}, whose last token is t_post.
    out: dict = {"positions": ["t_inst", *(f"post_{i}" for i in range(n_pos - 2)), "t_post"]}
    for i, slot in enumerate(slots):
        row = {}
        for name in HARMFUL_LIKE:
            if name not in coords:
                continue
            z = coords[name]
            y = [1] * z.shape[0] + [0] * neg.shape[0]
            folds = min(5, z.shape[0], neg.shape[0])
            aurocs = []
            for p in range(n_pos):
                x = torch.cat([z[:, i, p], neg[:, i, p]]).double().numpy()
                if folds < 2:
                    aurocs.append(None)
                    continue
                cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
                score = cross_val_predict(LogisticRegression(), x, y, cv=cv, method="decision_function")
                aurocs.append(round(float(roc_auc_score(y, score)), 3))
            row[name] = aurocs
        out[f"slot {slot}"] = row
    return out
