"""The directions stage: prompt sets → the model's own generations → residual caches → directions,
probes, selection and causal validation → a Directions artifact.

Every step writes its result under `out_dir/work/` (generations, caches, scores) and is skipped when
rerun, so an interrupted run resumes. Generations of harmful prompts stay in that folder. The figures
are drawn from the artifact by `report.figures.write_directions_figures`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from ..artifacts import _jsonable, cached_json, provenance, read_json, write_json
from ..capture.activations import Activations, CacheConfig, cache_residuals
from ..capture.generate import judged_generations
from ..capture.judges import DEFAULT_JUDGE, Judge, find_refusal_tokens
from ..data.chat import formatter_for
from ..data.prompts import PromptSet
from ..errors import HarcError
from ..model.hooked import HarcModel
from .artifact import Directions, Selection, add_response_directions, directions_from_activations
from .causal import causal_validation
from .means import cosine_per_layer
from .probes import LinearProbes, bootstrap_cosine, fit_probe, mean_cosine, probe_metrics, projection_metrics
from .selection import (
    Candidate,
    arditi_select,
    candidates_table,
    chosen_slot,
    harc_layer_scores,
    relaxed_pick,
    top_layers,
)

log = logging.getLogger(__name__)

PROMPT_POSITIONS = ("t_inst", "t_post", "post_instruction")  # the training cache: the position grid
PROBE_POSITIONS = ("t_inst", "t_post")  # where probes are fitted and held-out metrics read
RESPONSE_CACHES = ("harmful_compliance", "refusal", "helpful")


@dataclass(frozen=True)
class DirectionsConfig:
    n_train: int = 128  # per class, before filtering (Arditi et al.)
    n_val: int = 16  # per class, for selection
    n_test: int = 32  # per class, held out for probes and causal validation
    filter_train: bool = True  # keep harmful prompts the model refuses and harmless ones it answers
    max_new_tokens: int = 32  # generations used for filtering and response directions
    n_response: int = 32  # response tokens pooled by the response directions
    harmful_prefill: str = "Sure, here is"  # elicits harmful completions for v_harm_resp
    selection: str = "arditi"  # or "harc"
    selection_positions: tuple[str, ...] = ("t_post",)
    selection_slots: tuple[int, ...] | None = None  # None: every block input
    kl_max: float = 0.1
    max_layer_fraction: float = 0.8
    n_bootstrap: int = 200
    eval_max_new_tokens: int = 24
    batch_size: int = 16  # prompts per forward pass
    generation_batch_size: int = 64  # prompts per generate call (CPU decoding is ~1.4x faster at 64 than 16)
    seed: int = 0
    system_prompt: str | None = None

    def __post_init__(self):
        if min(self.n_train, self.n_val, self.n_test) < 2:
            raise HarcError("n_train, n_val and n_test must be at least 2")
        if self.selection not in ("arditi", "harc"):
            raise HarcError(f"selection must be 'arditi' or 'harc', got '{self.selection}'")
        if not 0 < self.max_layer_fraction <= 1:
            raise HarcError("max_layer_fraction must be in (0, 1]")
        if min(self.batch_size, self.generation_batch_size, self.max_new_tokens, self.n_response) < 1:
            raise HarcError("batch sizes, max_new_tokens and n_response must be positive")


@dataclass(frozen=True)
class Splits:
    """Disjoint train / val (selection) / test (probes, causal checks) subsets of each class."""

    harmful: tuple[PromptSet, PromptSet, PromptSet]
    harmless: tuple[PromptSet, PromptSet, PromptSet]

    def ids(self) -> dict[str, list[str]]:
        """Prompt ids per class and split (`harmful_train`, …), as recorded in the artifact."""
        return {
            f"{cls}_{part}": ps.ids
            for cls, sets in (("harmful", self.harmful), ("harmless", self.harmless))
            for part, ps in zip(("train", "val", "test"), sets, strict=True)
        }


@dataclass(frozen=True)
class OwnBehaviour:
    """What the model does with the training prompts: the subsets it refused, answered or complied
    with (prefilled), their responses, and its refusal-start tokens."""

    refused: PromptSet
    refusal_ids: list
    answered: PromptSet
    helpful_ids: list
    complied: PromptSet
    compliance_ids: list
    refusal_tokens: list[int]


def split_three(ps: PromptSet, n_train: int, n_val: int, n_test: int, seed: int) -> tuple[PromptSet, ...]:
    """Disjoint test, val and train subsets of a shuffled prompt set (test first, so it is stable)."""
    need = n_test + n_val + 2
    if len(ps) < need:
        raise HarcError(
            f"prompt set '{ps.name}' has {len(ps)} prompts; need at least {need} for these splits"
        )
    shuffled = ps.sample(None, seed=seed).prompts
    test, val, train = (
        shuffled[:n_test],
        shuffled[n_test : n_test + n_val],
        shuffled[n_test + n_val :][:n_train],
    )
    return tuple(PromptSet(ps.name, part) for part in (train, val, test))


def extract_directions(
    model: HarcModel,
    harmful: PromptSet,
    harmless: PromptSet,
    out_dir: str | Path,
    config: DirectionsConfig = DirectionsConfig(),
    judge: Judge = DEFAULT_JUDGE,
    refusal_tokens: Sequence[int] | None = None,
    progress: bool = True,
) -> Directions:
    """Run the whole directions stage and write `out_dir/directions.{safetensors,json}`.

    `judge(response) -> bool` decides refusals (default: Arditi's phrase matching). The refusal
    score's tokens are found from the model's own refusals unless `refusal_tokens` are given."""
    cfg, out_dir = config, Path(out_dir)
    work = out_dir / "work"
    _claim_run_folder(work, cfg, model, harmful, harmless)
    splits = Splits(
        split_three(harmful.with_label("harmful"), cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed),
        split_three(harmless.with_label("harmless"), cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed),
    )
    seconds: dict[str, float] = {}  # wall time of each step in this run (a step read back is ~0)
    with _timed(seconds, "generation"):
        own = own_behaviour(model, splits, work, cfg, judge, refusal_tokens, progress)
    use_h, use_b = (
        (own.refused, own.answered) if cfg.filter_train else (splits.harmful[0], splits.harmless[0])
    )
    with _timed(seconds, "caches"):
        train = _cache(model, use_h + use_b, work / "cache_train", cfg, PROMPT_POSITIONS, progress)
        test = _cache(
            model, splits.harmful[2] + splits.harmless[2], work / "cache_test", cfg, PROBE_POSITIONS, progress
        )
        responses = [
            _cache(model, ps, work / f"cache_{name}", cfg, ("response_mean",), progress, responses=ids)
            for name, ps, ids in zip(
                RESPONSE_CACHES,
                (own.complied, own.refused, own.answered),
                (own.compliance_ids, own.refusal_ids, own.helpful_ids),
                strict=True,
            )
        ]
    with _timed(seconds, "directions and probes"):
        is_h = _harmful_mask(train)
        d = add_response_directions(directions_from_activations(train, is_h, ~is_h), *responses)
        metrics, probes = diagnostics(d, train, test, cfg)
    with _timed(seconds, "selection"):
        selection = select_layer(model, d, splits, own.refusal_tokens, work, cfg, progress)
    with _timed(seconds, "causal checks"):
        causal = _causal_checks(model, d, splits, selection, work, cfg, judge, progress)
    d = d.with_meta(
        config=asdict(cfg),
        selected_layer=selection.selected_layer,
        refusal_tokens=own.refusal_tokens,
        refusal_token_strings=[model.tokenizer.decode([t]) for t in own.refusal_tokens],
        counts=_counts(splits, own),
        splits=splits.ids(),
        metrics=metrics,
        selection=selection.to_json(),
        causal_validation=causal,
        provenance=provenance(model),
        seconds={k: round(v, 1) for k, v in seconds.items()},
    )
    d = replace(d, probes=probes)
    d.save(out_dir)
    return d


@contextlib.contextmanager
def _timed(seconds: dict[str, float], step: str):
    start = time.perf_counter()
    yield
    seconds[step] = time.perf_counter() - start
    log.info("directions: %s took %.1f s", step, seconds[step])


def _claim_run_folder(work: Path, cfg: DirectionsConfig, model: HarcModel, harmful, harmless) -> None:
    """Record what this run folder is for; refuse one made by another run (settings, model, prompts).
    Batch sizes may change between a run and its resumption."""
    settings = {
        "config": asdict(cfg) | {"batch_size": 0, "generation_batch_size": 0},
        "model_fingerprint": model.fingerprint,
        "harmful": harmful.ids,
        "harmless": harmless.ids,
    }
    path = work / "config.json"
    if path.is_file() and read_json(path) != _jsonable(settings):
        raise HarcError(
            f"{work.parent} holds a directions run with other settings or prompts: use a new --out"
        )
    write_json(path, settings)


def _subset(ps: PromptSet, rows: list[dict], keep) -> tuple[PromptSet, list]:
    pairs = [(p, r) for p, r in zip(ps.prompts, rows, strict=True) if keep(r)]
    return PromptSet(ps.name, tuple(p for p, _ in pairs)), [r["response_ids"] for _, r in pairs]


def own_behaviour(
    model: HarcModel,
    splits: Splits,
    work: Path,
    cfg: DirectionsConfig,
    judge: Judge,
    refusal_tokens: Sequence[int] | None,
    progress: bool,
) -> OwnBehaviour:
    """The model's own responses to the training prompts (greedy; harmful ones also prefilled), judged:
    the filtered sets, their responses for the response directions, and the refusal-start tokens."""
    h_train, b_train = splits.harmful[0], splits.harmless[0]
    generations = partial(
        judged_generations,
        model,
        judge=judge,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.generation_batch_size,
        system_prompt=cfg.system_prompt,
        progress=progress,
    )
    h_gen = generations(h_train, work / "generations_harmful.json")
    b_gen = generations(b_train, work / "generations_harmless.json")
    prefilled = generations(h_train, work / "generations_harmful_prefill.json", prefill=cfg.harmful_prefill)
    if refusal_tokens is None:
        refusal_tokens = find_refusal_tokens(
            [r["response_ids"] for r in h_gen + b_gen if r["refusal"]],
            [r["response_ids"] for r in h_gen + b_gen if not r["refusal"]],
        )
    refused, refusal_ids = _subset(h_train, h_gen, lambda r: r["refusal"])
    answered, helpful_ids = _subset(b_train, b_gen, lambda r: not r["refusal"])
    complied, compliance_ids = _subset(h_train, prefilled, lambda r: not r["refusal"])
    for name, ps in (
        ("refused harmful", refused),
        ("answered harmless", answered),
        ("harmful completions", complied),
    ):
        if len(ps) < 2:
            raise HarcError(f"only {len(ps)} {name} prompts among the training prompts; use more prompts")
    log.info(
        "train: %d/%d harmful refused, %d/%d harmless answered, %d harmful completions",
        len(refused), len(h_train), len(answered), len(b_train), len(complied),
    )  # fmt: skip
    return OwnBehaviour(
        refused,
        refusal_ids,
        answered,
        helpful_ids,
        complied,
        compliance_ids,
        [int(t) for t in refusal_tokens],
    )


def _cache(
    model, ps: PromptSet, out: Path, cfg: DirectionsConfig, positions, progress, responses=None
) -> Activations:
    """A cache under `work/` (a finished one of the same run is read back by `cache_residuals`)."""
    config = CacheConfig(
        positions=positions,
        n_response=cfg.n_response,
        batch_size=cfg.batch_size,
        system_prompt=cfg.system_prompt,
    )
    return cache_residuals(model, ps, out_dir=out, responses=responses, config=config, progress=progress)


def _harmful_mask(acts: Activations) -> torch.Tensor:
    return torch.tensor([lab == "harmful" for lab in acts.meta["labels"]])


def diagnostics(
    d: Directions, train: Activations, test: Activations, cfg: DirectionsConfig
) -> tuple[dict, LinearProbes]:
    """Per layer and position: held-out AUROC/accuracy of the projection on the direction and of a
    logistic probe (fitted on the training cache, kept for scoring new prompts), training-set
    separability over the whole position grid, cos(v_harm, v_ref) with a bootstrap CI, the other
    cosines, and the held-out prompts' mean cosine with each direction."""
    layers = list(d.layers)
    is_h, t_is_h = _harmful_mask(train), _harmful_mask(test)
    probes, fitted = {}, {}
    for pos in PROBE_POSITIONS:
        tr, te = train.resid[:, :, train.positions.index(pos)], test.resid[:, :, test.positions.index(pos)]
        fitted[pos] = [fit_probe(tr[is_h, i], tr[~is_h, i], seed=cfg.seed) for i in range(len(layers))]
        probes[pos] = {
            "projection": [
                projection_metrics(tr[is_h, i], tr[~is_h, i], te[t_is_h, i], te[~t_is_h, i])
                for i in range(len(layers))
            ],
            "probe": [
                probe_metrics(tr[is_h, i], tr[~is_h, i], te[t_is_h, i], te[~t_is_h, i], probe=fitted[pos][i])
                for i in range(len(layers))
            ],
        }
    grid_auroc = {}
    for pos in d.grid_positions:  # training-set (in-sample) separability over every post-instruction token
        x = train.resid[:, :, train.positions.index(pos)]
        grid_auroc[pos] = [
            projection_metrics(x[is_h, i], x[~is_h, i], x[is_h, i], x[~is_h, i])["auroc"]
            for i in range(len(layers))
        ]
    inst, post = (train.resid[:, :, train.positions.index(p)] for p in PROBE_POSITIONS)
    cos_ci = bootstrap_cosine(
        inst[is_h], inst[~is_h], post[is_h], post[~is_h], n_resamples=cfg.n_bootstrap, seed=cfg.seed
    )
    v = d.vectors
    held_inst, held_post = (test.resid[t_is_h, :, test.positions.index(p)] for p in PROBE_POSITIONS)
    metrics = {
        "layers": layers,
        "probes": probes,
        "train_auroc_grid": grid_auroc,
        "cos_harm_ref": cos_ci,
        "other_cosines": {
            "cos(v_harm_resp, v_ref_resp)": cosine_per_layer(v["v_harm_resp"], v["v_ref_resp"]).tolist(),
            "cos(v_harm, v_harm_resp)": cosine_per_layer(v["v_harm"], v["v_harm_resp"]).tolist(),
            "cos(v_ref, v_ref_resp)": cosine_per_layer(v["v_ref"], v["v_ref_resp"]).tolist(),
        },
        "heldout_mean_cos": {
            "h_inst_with_v_harm": [mean_cosine(held_inst[:, i], v["v_harm"][i]) for i in range(len(layers))],
            "h_post_with_v_ref": [mean_cosine(held_post[:, i], v["v_ref"][i]) for i in range(len(layers))],
        },
    }
    for kind, key in (("projection", "best_harm_layer"), ("probe", "best_harm_layer_probe")):
        best = max(range(len(layers)), key=lambda i, kind=kind: probes["t_inst"][kind][i]["auroc"])
        metrics[key] = {"slot": layers[best], **probes["t_inst"][kind][best]}
    return metrics, LinearProbes.stack(fitted, layers)


def select_layer(
    model: HarcModel,
    d: Directions,
    splits: Splits,
    refusal_tokens: Sequence[int],
    work: Path,
    cfg: DirectionsConfig,
    progress: bool,
) -> Selection:
    """The refusal-direction selection (Arditi et al.) on the validation prompts, cached; when no
    candidate passes its filters they are relaxed (recorded), and the HARC layer score is the fallback."""
    fmt = formatter_for(model, cfg.system_prompt)

    def score_candidates():
        best, cands, base = arditi_select(
            model,
            d,
            fmt.format_many(splits.harmful[1].texts),
            fmt.format_many(splits.harmless[1].texts),
            refusal_tokens,
            slots=cfg.selection_slots,
            positions=cfg.selection_positions,
            max_layer_fraction=cfg.max_layer_fraction,
            kl_max=cfg.kl_max,
            batch_size=cfg.batch_size,
            progress=progress,
        )
        return {
            "best": asdict(best) if best else None,
            "candidates": candidates_table(cands),
            "baseline": base,
        }

    arditi = cached_json(work / "selection_arditi.json", score_candidates)
    harc_scores = harc_layer_scores(d)
    pick, relaxed = arditi["best"], None
    if cfg.selection == "arditi" and pick is None:
        # Keep the run going and say so: the artifact records that the filters were relaxed (or failed).
        relaxed = relaxed_pick([Candidate(**c) for c in arditi["candidates"]])
        pick = asdict(relaxed) if relaxed else None
        log.warning(
            "no refusal-direction candidate passed its filters; %s",
            f"relaxed them: slot {relaxed.slot} ({relaxed.reason})"
            if relaxed
            else "using the HARC layer score",
        )
    method = "harc" if cfg.selection == "arditi" and pick is None else cfg.selection
    slot = chosen_slot(method, pick["slot"] if pick else None, harc_scores, list(d.layers))
    # A refusal-direction selection over several positions may pick another post-instruction token:
    # the causal checks then test that direction, the one the selection vouched for.
    picked = pick["position"] if method == "arditi" else "t_post"
    return Selection(
        method=method,
        requested_method=cfg.selection,
        arditi_filters_relaxed=relaxed is not None,
        selected_layer=slot,
        refusal_position="t_post" if picked in ("t_post", d.grid_positions[-1]) else picked,
        arditi=arditi,
        harc_scores=harc_scores,
        harc_top_layers=top_layers(harc_scores, list(d.layers), 4),
    )


def _causal_checks(model, d, splits: Splits, selection: Selection, work: Path, cfg, judge, progress) -> dict:
    """Causal validation at the selected slot on the held-out test prompts, cached."""
    fmt = formatter_for(model, cfg.system_prompt)
    slot = selection.selected_layer
    return cached_json(
        work / f"causal_slot{slot}.json",
        lambda: causal_validation(
            model,
            d,
            slot,
            fmt.format_many(splits.harmful[2].texts),
            fmt.format_many(splits.harmless[2].texts),
            judge=judge,
            max_new_tokens=cfg.eval_max_new_tokens,
            batch_size=cfg.generation_batch_size,
            responses_path=work / f"causal_slot{slot}_responses.json",
            refusal_position=None if selection.refusal_position == "t_post" else selection.refusal_position,
            progress=progress,
        ),
    )


def _counts(splits: Splits, own: OwnBehaviour) -> dict[str, int]:
    return {
        "train_harmful": len(splits.harmful[0]),
        "train_harmless": len(splits.harmless[0]),
        "refused": len(own.refused),
        "answered": len(own.answered),
        "harmful_completions": len(own.complied),
        "val": len(splits.harmful[1]),
        "test": len(splits.harmful[2]),
    }
