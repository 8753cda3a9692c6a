"""The directions stage: prompt sets → the model's own generations → residual caches → directions,
probes, selection and causal validation → a Directions artifact with figures.

Every step writes its result under `out_dir/work/` (generations, caches, scores) and is skipped when
rerun, so an interrupted run resumes. Generations of harmful prompts stay in that folder.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from .activations import Activations, CacheConfig, cache_residuals
from .artifacts import read_json, write_json
from .chat import formatter_for
from .directions import Directions, add_response_directions, cosine_per_layer, directions_from_activations
from .errors import HarcError
from .evaluate import DEFAULT_JUDGE, Judge, find_refusal_tokens
from .generate import judged_generations
from .model import HarcModel
from .plots import cosine_figure, metric_curves_figure, selection_figure, write_figure
from .probes import bootstrap_cosine, mean_cosine, probe_metrics, projection_metrics
from .prompts import PromptSet
from .selection import (
    Candidate,
    arditi_select,
    candidates_table,
    causal_validation,
    chosen_slot,
    harc_layer_scores,
    relaxed_pick,
    top_layers,
)

log = logging.getLogger(__name__)


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
    batch_size: int = 16
    seed: int = 0
    system_prompt: str | None = None

    def __post_init__(self):
        if min(self.n_train, self.n_val, self.n_test) < 2:
            raise HarcError("n_train, n_val and n_test must be at least 2")
        if self.selection not in ("arditi", "harc"):
            raise HarcError(f"selection must be 'arditi' or 'harc', got '{self.selection}'")
        if not 0 < self.max_layer_fraction <= 1:
            raise HarcError("max_layer_fraction must be in (0, 1]")


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


def _cached(path: Path, compute):
    if path.is_file():
        return read_json(path)
    result = compute()
    write_json(path, result)
    return result


def _cache(
    model, ps: PromptSet, out: Path, cfg: DirectionsConfig, positions, progress, responses=None
) -> Activations:
    if (out / "activations.json").is_file():
        return Activations.load(out)
    config = CacheConfig(
        positions=positions,
        n_response=cfg.n_response,
        batch_size=cfg.batch_size,
        system_prompt=cfg.system_prompt,
    )
    return cache_residuals(model, ps, out_dir=out, responses=responses, config=config, progress=progress)


def _subset(ps: PromptSet, rows: list[dict], keep) -> tuple[PromptSet, list]:
    pairs = [(p, r) for p, r in zip(ps.prompts, rows, strict=True) if keep(r)]
    return PromptSet(ps.name, tuple(p for p, _ in pairs)), [r["response_ids"] for _, r in pairs]


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
    """Run the whole directions stage and write `out_dir/directions.{safetensors,json}` and figures.

    `judge(response) -> bool` decides refusals (default: Arditi's phrase matching). The refusal
    score's tokens are found from the model's own refusals unless `refusal_tokens` are given."""
    cfg = config
    out_dir = Path(out_dir)
    work = out_dir / "work"
    settings_path = work / "config.json"
    settings = {
        "config": asdict(cfg),
        "model_fingerprint": model.fingerprint,
        "harmful": harmful.ids,
        "harmless": harmless.ids,
    }
    if settings_path.is_file() and read_json(settings_path) != json.loads(json.dumps(settings)):
        raise HarcError(f"{out_dir} holds a directions run with other settings or prompts: use a new --out")
    write_json(settings_path, settings)

    harmful, harmless = harmful.with_label("harmful"), harmless.with_label("harmless")
    h_train, h_val, h_test = split_three(harmful, cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed)
    b_train, b_val, b_test = split_three(harmless, cfg.n_train, cfg.n_val, cfg.n_test, cfg.seed)

    # 1. The model's own behaviour on the training prompts: filtering, refusal tokens, responses.
    generations = partial(
        judged_generations,
        model,
        judge=judge,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
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
    refusal_tokens = [int(t) for t in refusal_tokens]
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
    use_h, use_b = (refused, answered) if cfg.filter_train else (h_train, b_train)
    log.info(
        "train: %d/%d harmful refused, %d/%d harmless answered, %d harmful completions",
        len(refused),
        len(h_train),
        len(answered),
        len(b_train),
        len(complied),
    )

    # 2. Residual caches: prompt side (train and held-out test) and response side.
    prompt_pos = ("t_inst", "t_post", "post_instruction")
    train = _cache(model, use_h + use_b, work / "cache_train", cfg, prompt_pos, progress)
    test = _cache(model, h_test + b_test, work / "cache_test", cfg, ("t_inst", "t_post"), progress)
    resp = {
        name: _cache(model, ps, work / f"cache_{name}", cfg, ("response_mean",), progress, responses=ids)
        for name, ps, ids in (
            ("harmful_compliance", complied, compliance_ids),
            ("refusal", refused, refusal_ids),
            ("helpful", answered, helpful_ids),
        )
    }

    # 3. Directions.
    is_h = torch.tensor([lab == "harmful" for lab in train.meta["labels"]])
    d = directions_from_activations(train, is_h, ~is_h)
    d = add_response_directions(d, resp["harmful_compliance"], resp["refusal"], resp["helpful"])

    # 4. Diagnostics per layer and position.
    layers = list(d.layers)
    t_is_h = torch.tensor([lab == "harmful" for lab in test.meta["labels"]])
    probes, grid_auroc = {}, {}
    for pos in ("t_inst", "t_post"):
        tr, te = train.resid[:, :, train.positions.index(pos)], test.resid[:, :, test.positions.index(pos)]
        probes[pos] = {
            "projection": [
                projection_metrics(tr[is_h, i], tr[~is_h, i], te[t_is_h, i], te[~t_is_h, i])
                for i in range(len(layers))
            ],
            "probe": [
                probe_metrics(tr[is_h, i], tr[~is_h, i], te[t_is_h, i], te[~t_is_h, i], seed=cfg.seed)
                for i in range(len(layers))
            ],
        }
    for pos in d.grid_positions:  # training-set (in-sample) separability over every post-instruction token
        x = train.resid[:, :, train.positions.index(pos)]
        grid_auroc[pos] = [
            projection_metrics(x[is_h, i], x[~is_h, i], x[is_h, i], x[~is_h, i])["auroc"]
            for i in range(len(layers))
        ]
    ti, tp = train.positions.index("t_inst"), train.positions.index("t_post")
    cos_ci = bootstrap_cosine(
        train.resid[is_h, :, ti],
        train.resid[~is_h, :, ti],
        train.resid[is_h, :, tp],
        train.resid[~is_h, :, tp],
        n_resamples=cfg.n_bootstrap,
        seed=cfg.seed,
    )
    v = d.vectors
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
            "h_inst_with_v_harm": [
                mean_cosine(test.resid[t_is_h, i, 0], v["v_harm"][i]) for i in range(len(layers))
            ],
            "h_post_with_v_ref": [
                mean_cosine(test.resid[t_is_h, i, 1], v["v_ref"][i]) for i in range(len(layers))
            ],
        },
    }
    for kind, key in (("projection", "best_harm_layer"), ("probe", "best_harm_layer_probe")):
        best = max(range(len(layers)), key=lambda i, kind=kind: probes["t_inst"][kind][i]["auroc"])
        metrics[key] = {"slot": layers[best], **probes["t_inst"][kind][best]}

    # 5. Selection on the validation prompts.
    fmt = formatter_for(model, cfg.system_prompt)
    hv, bv = fmt.format_many(h_val.texts), fmt.format_many(b_val.texts)

    def select():
        best, cands, base = arditi_select(
            model,
            d,
            hv,
            bv,
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

    arditi = _cached(work / "selection_arditi.json", select)
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
    slot = chosen_slot(method, pick["slot"] if pick else None, harc_scores, layers)
    # A refusal-direction selection over several positions may pick another post-instruction token:
    # the causal checks then test that direction, the one the selection vouched for.
    picked = pick["position"] if method == "arditi" else "t_post"
    refusal_position = None if picked in ("t_post", d.grid_positions[-1]) else picked
    selection = {
        "method": method,
        "requested_method": cfg.selection,
        "arditi_filters_relaxed": relaxed is not None,
        "selected_layer": slot,
        "refusal_position": refusal_position or "t_post",
        "arditi": arditi,
        "harc_scores": harc_scores,
        "harc_top_layers": top_layers(harc_scores, layers, 4),
    }

    # 6. Causal validation on held-out prompts.
    causal = _cached(
        work / f"causal_slot{slot}.json",
        lambda: causal_validation(
            model,
            d,
            slot,
            fmt.format_many(h_test.texts),
            fmt.format_many(b_test.texts),
            judge=judge,
            max_new_tokens=cfg.eval_max_new_tokens,
            batch_size=cfg.batch_size,
            responses_path=work / f"causal_slot{slot}_responses.json",
            refusal_position=refusal_position,
            progress=progress,
        ),
    )

    refusal_strings = [model.tokenizer.decode([t]) for t in refusal_tokens]
    d = d.with_meta(
        config=asdict(cfg),
        selected_layer=slot,
        refusal_tokens=refusal_tokens,
        refusal_token_strings=refusal_strings,
        counts={
            "train_harmful": len(h_train),
            "train_harmless": len(b_train),
            "refused": len(refused),
            "answered": len(answered),
            "harmful_completions": len(complied),
            "val": len(h_val),
            "test": len(h_test),
        },
        splits={
            "harmful_test": h_test.ids,
            "harmless_test": b_test.ids,
            "harmful_val": h_val.ids,
            "harmless_val": b_val.ids,
            "harmful_train": h_train.ids,
            "harmless_train": b_train.ids,
        },
        metrics=metrics,
        selection=selection,
        causal_validation=causal,
    )
    d.save(out_dir)
    figures = out_dir / "figures"
    write_figure(metric_curves_figure(metrics), figures / "auroc_by_layer")
    write_figure(cosine_figure(metrics), figures / "cosine_by_layer")
    write_figure(selection_figure(arditi["candidates"], harc_scores, layers), figures / "selection")
    return d
