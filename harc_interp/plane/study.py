"""The prompts the plane is studied on: plain sets plus attack classes (full prompts and filled
templates), without the prompts the directions were computed or selected on."""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from ..data.prompts import PromptSet, expand_attacks
from ..errors import HarcError
from .basis import REFERENCE
from .geometry import group_of


def study_prompts(
    sets: Sequence[PromptSet],
    *,
    goals: PromptSet | None = None,
    n_goals: int = 8,
    per_class: int | None = None,
    classes: Sequence[str] | None = None,
    exclude_ids: Collection[str] = (),
    seed: int = 0,
) -> PromptSet:
    """Plain prompts (grouped by label), full jailbreak prompts (by attack class) and attack templates
    filled with `n_goals` harmful goals (`goals`, else the plain harmful prompts among `sets`).

    `classes` keeps only those attack classes (plain labelled prompts are always kept); `per_class`
    draws a deterministic sample of at most that many prompts per group; `exclude_ids` drops prompts
    (and goals) by id, e.g. those used to compute the directions (`Directions.training_ids()`)."""
    exclude = set(exclude_ids)
    if classes is not None:
        merged = PromptSet(
            "prompts", tuple(p for s in sets for p in s.prompts), tuple(t for s in sets for t in s.templates)
        )
        sets = [merged.attack_classes(classes)]
    prompts = [p for s in sets for p in s.prompts if p.id not in exclude]
    templates = [t for s in sets for t in s.templates]
    if templates:
        pool = goals.prompts if goals is not None else [p for p in prompts if group_of(p) == REFERENCE]
        pool = [p for p in pool if p.id not in exclude]
        if not pool:
            raise HarcError(
                "attack templates need harmful goals to fill them: pass a goals file (--goals) or include "
                "plain harmful prompts (label 'harmful')"
            )
        chosen = PromptSet("goals", tuple(pool)).sample(min(n_goals, len(pool)), seed=seed).prompts
        prompts += list(expand_attacks(templates, chosen).prompts)
    if not prompts:
        raise HarcError("no prompts left for the plane (check --classes and the prompt files)")
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise HarcError(f"prompt id '{p.id}' occurs twice: give each file's rows distinct ids")
        seen.add(p.id)
    if per_class is not None:
        rng = random.Random(seed)
        by_group: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            by_group.setdefault(group_of(p), []).append(i)
        keep: set[int] = set()
        for idx in by_group.values():
            keep |= set(rng.sample(idx, min(per_class, len(idx))))
        prompts = [p for i, p in enumerate(prompts) if i in keep]
    return PromptSet("plane", tuple(prompts))
