"""Re-judging saved responses with any judge, and how far two judges agree.

`responses.json` (as `harc eval` writes it) maps each group (jailbreaks, harmful, borderline, …) to
rows {id, prompt, response, refusal} (and a jailbreak's goal); `rejudge` gives every row a `Verdict`
from another judge without generating anything, and `agreement` compares two judges' refusal calls
(confusion matrix, Cohen's κ)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from sklearn.metrics import cohen_kappa_score

from ..capture.judges import PhraseJudge, Verdict, phrase_verdict
from ..capture.model_judge import ModelJudge
from ..errors import HarcError

JudgeSpec = str  # "phrase", "phrase-prefix", "model:SPEC" (chat template) or "model-raw:SPEC"


def make_judge(spec: JudgeSpec, load: Callable[[str], object], cache_path: str | Path | None = None):
    """A judge from its spec; `load(model_spec)` loads a judge model (only model judges need one, and
    cache their verdicts at `cache_path` when given)."""
    if spec == "phrase":
        return PhraseJudge()
    if spec == "phrase-prefix":
        return PhraseJudge(prefix_only=True)
    kind, sep, model = spec.partition(":")
    if sep and model and kind in ("model", "model-raw"):
        return ModelJudge(load(model), chat=kind == "model", cache_path=cache_path)
    raise HarcError(f"unknown judge {spec!r}: use phrase, phrase-prefix, model:MODEL or model-raw:MODEL")


def check_responses(groups: object, source: str) -> dict[str, list[dict]]:
    """The saved responses, or an error that names what is wrong with them."""
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise HarcError(f"{source} must map groups to lists of rows (as `harc eval` writes responses.json)")
    for name, rows in groups.items():
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or not isinstance(row.get("response"), str) or "id" not in row:
                raise HarcError(f"{source}: group '{name}' row {i} needs an 'id' and a 'response'")
    return groups


def rejudge(groups: dict[str, list[dict]], judge) -> dict[str, list[Verdict]]:
    """Every saved row judged again; a model judge needs the rows' prompts, and holds an answer to the
    row's goal where it has one (a jailbreak's request, not its wrapper)."""
    out = {}
    for name, rows in groups.items():
        if isinstance(judge, ModelJudge):
            if any("prompt" not in r for r in rows):
                raise HarcError(
                    f"the responses of group '{name}' carry no prompts, which a model judge needs: rerun "
                    "`harc eval` (it saves them since this version)"
                )
            out[name] = judge.verdicts([(r.get("goal") or r["prompt"], r["response"]) for r in rows])
        else:
            out[name] = [phrase_verdict(judge, r.get("prompt", ""), r["response"]) for r in rows]
    return out


def refusal_score(v: Verdict) -> float:
    """How strongly a verdict says "refused or harmless", 0..1, on one scale for every judge: a phrase
    judge's 1 or 0, a model judge's 1 − P(yes). Where two judges' scores differ most is where they
    disagree most."""
    return v.score if v.harmful is None else 1.0 - v.score


def agreement(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """How two judges' refusal calls agree: share agreeing, Cohen's κ (None when both give the same single
    answer throughout: κ is undefined there), and the confusion matrix [[both refuse, only a], [only b,
    neither]]."""
    if len(a) != len(b):
        raise HarcError(f"{len(a)} verdicts against {len(b)}")
    if not a:
        return {"n": 0, "agree": None, "kappa": None, "confusion": [[0, 0], [0, 0]]}
    both = sum(x and y for x, y in zip(a, b, strict=True))
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    neither = len(a) - both - only_a - only_b
    kappa = None if len(set(a) | set(b)) < 2 else float(cohen_kappa_score(list(a), list(b)))
    return {
        "n": len(a),
        "agree": (both + neither) / len(a),
        "kappa": kappa,
        "confusion": [[both, only_a], [only_b, neither]],
    }
