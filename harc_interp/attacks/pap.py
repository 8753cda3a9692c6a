"""PAP with an attacker model (Zeng et al. 2024): any local causal LM rewrites each harmful goal as a
persuasive paraphrase under a chosen persuasion technique (greedy, batched). The result is a prompt set
of full jailbreak prompts, attack class `pap`, usable wherever attack files are (`harc eval --jailbreaks`,
`harc plane --prompts`); the fixed-template PAP needs no model (`data.attack_classes.pap_templates`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..capture.generate import generate_chats
from ..data.attack_classes import (
    ATTACK_SOURCES,
    LICENSE,
    PERSUASION_TECHNIQUES,
    check_techniques,
    pap_rewrite_request,
)
from ..data.chat import formatter_for
from ..data.prompts import Prompt, PromptSet
from ..model.edits import Variant
from ..model.hooked import HarcModel
from .pair import parse_proposal


def pap_rewrites(
    attacker: HarcModel,
    goals: PromptSet | Sequence[Prompt],
    techniques: Sequence[str] | None = None,
    *,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    variant: Variant | None = None,
    progress: bool = True,
) -> PromptSet:
    """Every goal rewritten under every technique (all of `PERSUASION_TECHNIQUES` by default) by
    `attacker`, greedy: one prompt per (technique, goal), id `pap-<technique>::<goal id>`, labelled
    'jailbreak', with its goal, technique, attacker, reference and licence recorded. An empty rewrite
    falls back to the goal itself (recorded as `fallback`)."""
    names = tuple(PERSUASION_TECHNIQUES) if techniques is None else tuple(techniques)
    check_techniques(names)
    variant = variant or Variant()
    rows = [(t, g) for t in names for g in goals]
    asks = [pap_rewrite_request(g.prompt, t) for t, g in rows]
    with variant.context():
        outs = generate_chats(
            attacker,
            formatter_for(attacker).format_many(asks),
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            hooks=list(variant.hooks),
            progress=progress,
        )
    prompts = []
    for (t, g), (ids, _) in zip(rows, outs, strict=True):
        raw = attacker.tokenizer.decode(ids, skip_special_tokens=True)
        text = parse_proposal(raw, g.prompt)
        meta = {
            "method": f"rewrite:{t}",
            "technique": t,
            "goal_id": g.id,
            "attacker": attacker.name,
            "fallback": text == g.prompt,
            "source": "harc_pap_rewrite",
            "reference": ATTACK_SOURCES["pap"],
            "license": f"{attacker.name}'s output; the brief is {LICENSE}",
        }
        prompts.append(Prompt(f"pap-{t}::{g.id}", text, "jailbreak", g.category, "pap", g.prompt, meta))
    return PromptSet("pap_rewrites", tuple(prompts))


def prompt_rows(ps: PromptSet) -> list[dict]:
    """A prompt set as attack-file rows (what `load_prompts` reads back, extra fields kept in `meta`)."""
    return [
        {"id": p.id, "prompt": p.prompt, "label": p.label, "category": p.category,
         "attack_class": p.attack_class, "goal": p.goal, **p.meta}
        for p in ps.prompts
    ]  # fmt: skip
