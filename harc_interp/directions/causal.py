"""The causal checks: which direction drives refusal (ablating it bypasses refusal, adding it
induces refusal) and which only encodes harm, on held-out prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..artifacts import write_json
from ..capture.generate import generate_texts
from ..capture.judges import DEFAULT_JUDGE, Judge
from ..data.chat import ChatPrompt
from ..errors import HarcError
from ..model.edits import ablation_hooks, addition_hooks
from ..model.hooked import HarcModel
from .artifact import Directions


def causal_validation(
    model: HarcModel,
    directions: Directions,
    slot: int,
    harmful: Sequence[ChatPrompt],
    harmless: Sequence[ChatPrompt],
    *,
    judge: Judge = DEFAULT_JUDGE,
    coefficients: Sequence[float] = (1.0, 2.0),
    max_new_tokens: int = 24,
    batch_size: int = 16,
    responses_path: str | Path | None = None,
    refusal_position: str | None = None,
    progress: bool = True,
) -> dict:
    """Refusal rates on held-out prompts: harmful with and without ablating each direction everywhere,
    harmless with and without adding `c ·` the raw direction at `slot` for each coefficient c (the
    headline numbers are c = 1, as in Arditi et al.; the others give the dose response). Refusal-driving
    directions move both. With `responses_path`, every judged response is written there (not logged).
    `refusal_position` (a grid position) tests the refusal direction read there instead of v_ref at
    t_post: the direction a refusal-direction selection picked at another post-instruction token."""
    if slot >= model.n_layers:
        raise HarcError(f"causal validation needs a block input slot < {model.n_layers}, got {slot}")
    if 1.0 not in coefficients:
        raise HarcError(
            f"the addition coefficients must include 1.0 (the headline), got {list(coefficients)}"
        )
    responses: dict[str, list[str]] = {}

    def refusals(key, chats, hooks=()):
        responses[key] = generate_texts(
            model, chats, max_new_tokens=max_new_tokens, batch_size=batch_size, hooks=hooks, progress=progress
        )
        return [judge(text) for text in responses[key]]

    base_harmful, base_harmless = refusals("harmful", harmful), refusals("harmless", harmless)
    answered = [i for i, r in enumerate(base_harmless) if not r]
    out = {
        "slot": slot,
        "n_harmful": len(harmful),
        "n_harmless": len(harmless),
        "max_new_tokens": max_new_tokens,
        "harmful_refusal_rate": _rate(base_harmful),
        "harmless_refusal_rate": _rate(base_harmless),
    }
    raw = {"v_ref": directions.raw("v_ref", slot), "v_harm": directions.raw("v_harm", slot)}
    if refusal_position is not None:
        raw["v_ref"] = directions.grid_raw(slot, refusal_position)
        out["v_ref_position"] = refusal_position
    for name in ("v_ref", "v_harm"):
        ablated = refusals(f"harmful_{name}_ablated", harmful, ablation_hooks(model, raw[name]))
        doses = []
        for c in coefficients:
            hooks = addition_hooks(model, c * raw[name], slot)
            added = refusals(f"harmless_{name}_added_x{c:g}", harmless, hooks)
            doses.append(
                {
                    "coefficient": c,
                    "harmless_refusal_rate_added": _rate(added),
                    "induced_on_answered": _rate([added[i] for i in answered]) if answered else None,
                }
            )
        headline = next(d for d in doses if d["coefficient"] == 1.0)
        out[name] = {
            "harmful_refusal_rate_ablated": _rate(ablated),
            "harmless_refusal_rate_added": headline["harmless_refusal_rate_added"],
            "induced_on_answered": headline["induced_on_answered"],
            "addition_dose_response": doses,
        }
    if responses_path is not None:
        write_json(responses_path, responses)
    return out


def _rate(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")
