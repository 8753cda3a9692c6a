"""Training the confined coupling (subspace mode): data are plane coordinates, the model stays frozen.

At each coupling slot the plane coordinates of every span position (t_inst and the template suffix),
and of the model's own first response tokens, are cached for every condition (`datasets`); the map
is then trained on them against the objective in `objective` (harmful-like read-outs pushed to a
margin, harmless-like ones held, movement charged). Span-reading maps also read the span's coordinates
at `read_slots` (cached beside the slot's own). With `position_maps`, each span token gets a map of its
own and is standardised on its own.

Because f only sees the plane, training needs no backward pass through the model: seconds on a CPU.
With several slots the maps train in order, shallowest first: a slot's coordinates are cached with the
already-trained maps upstream of it active, so the maps compose as they will run. (Maps trained
independently and then stacked moved harmless residuals far off: KL 2.7 on the real model.)
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from ..artifacts import cached_json, cached_tensors, json_digest, now, provenance, write_json
from ..capture.forward import kl_divergence
from ..capture.responding import pooled_rate, refusal_rates
from ..capture.sweep import last_token_logprobs
from ..data.chat import formatter_for
from ..data.prompts import PromptSet
from ..directions.artifact import Directions
from ..errors import HarcError
from ..model.edits import Variant
from ..model.hooked import HarcModel
from .datasets import (
    HARMFUL_LIKE,
    HARMLESS_LIKE,
    plane_coordinates_dataset,
    plane_separability,
    response_coordinates_dataset,
)
from .loop import TrainConfig, train_loop
from .maps import CouplingIntervention
from .objective import Margins, fit_slot_objective

log = logging.getLogger(__name__)


# Default depths, as fractions of the model's blocks: the coupled slot, and the earlier slots whose span
# the maps also read. A relative rule, not a layer number: on the 0.5B model (24 blocks) they give slot
# 14 and read slots 6, 10, where the coupling was measured; the 1.5B model (28 blocks) gets 17, and 7, 12.
# The directions' own pick is no guide here: on small models no candidate passes Arditi's filters, and the
# relaxed pick sits late (slot 18 of 24), where a single coupling barely moves behaviour (design notes).
COUPLING_DEPTH = 0.6
READ_DEPTHS = (0.25, 0.42)


def default_slots(n_layers: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(coupled slots, read slots) at `COUPLING_DEPTH` and `READ_DEPTHS` of a model with `n_layers` blocks."""
    slot = min(max(round(COUPLING_DEPTH * n_layers), 1), n_layers - 1)
    reads = sorted({round(f * n_layers) for f in READ_DEPTHS} - {slot})
    return (slot,), tuple(r for r in reads if 0 <= r < slot)


# SubspaceConfig fields that only choose the margin among trained maps (not part of any map's training).
CALIBRATION_FIELDS = (
    "margin_grid",
    "over_refusal_tolerance",
    "kl_budget",
    "calibration_tokens",
    "calibration_rows",
)


@dataclass(frozen=True)
class SubspaceConfig:
    """What most users touch: `slots` (default: 0.6 of the depth), `margin` (default: calibrated),
    `over_refusal_tolerance` (the calibration's budget for safe prompts) and `response_tokens`. The rest are
    advanced: each default is a rule measured on the real model (docs/design.md), not a per-model value."""

    slots: tuple[int, ...] | None = None  # None: `default_slots`
    hidden: int = 32
    # Where harmful-like prompts must reach (1 = the plain-harmful mean). None: calibrated per slot on the
    # validation rows by what a user sees: candidates of `margin_grid`, each answering the validation
    # prompts (greedy, `calibration_tokens`, the phrase judge), are searched by bisection for those whose
    # harmless and borderline refusal rate rises by at most `over_refusal_tolerance` over the uncoupled
    # model and whose next-token KL on those validation prompts stays within `kl_budget` (both rise with
    # the margin, so three of the seven default candidates are trained and answered, not all seven), and of
    # those the one whose validation jailbreaks are refused most is kept (`pick_margin`; the smallest,
    # with a warning, if even it breaks the rule). The steering baselines'
    # coefficient follows the same refusal rule. (A budget on plane movement, the earlier rule, did not
    # transfer: 0.6 σ² was met on the dev sets and by no margin on the starter sets. A grid that stopped
    # at 3 was exhausted on the real 0.5B model with safe refusals unchanged: it runs on to 8.)
    margin: float | None = None
    margin_grid: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)
    over_refusal_tolerance: float = 0.05
    kl_budget: float = 0.1  # KL(uncoupled ‖ coupled) at t_post, mean over the safe validation prompts
    calibration_tokens: int = 24
    calibration_rows: int = 32  # at most this many validation prompts per group answered per candidate
    safe_margin: float = 0.5  # harmless/borderline refusal coordinate stays below halfway
    # Cost per gap of raising a harmless/borderline prompt's refusal read-out at all (the mirror of the
    # harmful-like "lowering costs"). The margin hinge is free below `safe_margin`, and retention is
    # quadratic, so without it small rises on prompts the model answers only just were nearly free.
    safe_raise_weight: float = 3.0
    # Plain harmful prompts' margin (None: `margin`). The model already refuses them mostly, and they sit
    # next to the borderline prompts in the plane, so pushing them as hard as the attacked prompts
    # (jailbreaks, white-box suppression) lifts the borderline prompts with them.
    plain_margin: float | None = 0.8
    # 10 left the map a no-op on the real 0.5B model (eval unchanged); 1 moved ASR at harmless KL 0.06.
    retention_weight: float = 1.0
    # One map per span position (t_inst, each template-suffix token; responses use t_post's) instead of
    # one shared map; each position's coordinates are then also constrained where harmful and harmless
    # prompts differ there by at least `min_separation` standard deviations (besides HARC's two reads).
    position_maps: bool = False
    min_separation: float = 0.5
    # Response tokens get a map of their own, trained on the plane coordinates of the model's own first
    # `response_tokens` response tokens under every condition (0: responses use t_post's map, untrained
    # there). Harmful-like responses' refusal read-out is pushed `response_margin` t_post gaps above the
    # harmless responses' mean; harmless-like ones are held below `safe_margin` with retention.
    response_tokens: int = 8
    response_margin: float = 1.0
    # Plain harmful prompts' response margin (None: `response_margin`); 0 only keeps their responses'
    # refusal from falling: pushing them lifted the borderline responses they cannot be told from.
    plain_response_margin: float | None = 0.0
    # t_post's and the response map also read the plane coordinates of the whole template span
    # (t_inst … t_post); the other span tokens are left unedited, except with position maps, where
    # every span token is edited and reads the span up to itself. At t_post a harmful prompt whose refusal
    # was suppressed upstream looks harmless in the plane, but the span still tells it apart. On the real
    # 0.5B model it lifted held-out jailbreaks 3× further than the one-token map while moving safe prompts
    # 5× less (design notes); False gives the literal f(Uᵀh), one token at a time.
    span_context: bool = True
    # Earlier slots whose span plane coordinates the span-reading maps also read (each in its own slot's
    # plane): a prompt that looks harmless in one layer's plane is often told apart by where its span sat
    # a few layers earlier. On the real 0.5B model, jailbreak vs harmless AUROC of a linear read of the
    # span rises from 0.88 (slot 14) to 0.97 (slots 6, 10, 14) (design notes). The edit stays at `slots`.
    # None: `default_slots` (with default `slots`; none otherwise); () reads none.
    read_slots: tuple[int, ...] | None = None
    # Share of each condition's cached prompts held out of training: the calibration's validation rows;
    # the summary reports the objective and read-outs on them. Evaluation prompts are never among them.
    validation_fraction: float = 0.25
    batch_per_condition: int = 64
    train: TrainConfig = TrainConfig(steps=1500, lr=1e-2, checkpoint_every=250, log_every=50)
    batch_size: int = 16  # forward batches when caching coordinates
    system_prompt: str | None = None

    def __post_init__(self):
        if self.response_tokens < 0:
            raise HarcError(f"response_tokens must be >= 0, got {self.response_tokens}")
        if not 0 <= self.validation_fraction < 1:
            raise HarcError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if not 0 <= self.over_refusal_tolerance <= 1:
            raise HarcError(f"over_refusal_tolerance is a rate in [0, 1], got {self.over_refusal_tolerance}")
        if not self.kl_budget > 0:
            raise HarcError(f"kl_budget must be positive, got {self.kl_budget}")
        if self.calibration_tokens < 1 or self.calibration_rows < 1:
            raise HarcError("calibration_tokens and calibration_rows must be positive")
        if self.hidden < 1 or self.batch_per_condition < 1 or self.batch_size < 1:
            raise HarcError("hidden, batch_per_condition and batch_size must be positive")
        if self.margin is None and (not self.validation_fraction or not self.margin_grid):
            raise HarcError(
                "calibrating the margin needs validation rows and candidates: set validation_fraction > 0 "
                "and a margin_grid, or give a margin"
            )

    def resolved(self, n_layers: int) -> SubspaceConfig:
        """This config with the slot rules applied for a model of `n_layers` blocks: default slots read the
        span at `READ_DEPTHS` too (span-reading maps only); slots given without read slots read none."""
        slots, reads = default_slots(n_layers)
        if self.slots is not None or not self.span_context:
            reads = ()
        return replace(
            self,
            slots=slots if self.slots is None else tuple(self.slots),
            read_slots=reads if self.read_slots is None else tuple(self.read_slots),
        )


def train_subspace(
    model: HarcModel,
    d: Directions,
    sets: dict[str, PromptSet],
    out_dir: str | Path,
    config: SubspaceConfig = SubspaceConfig(),
    progress: bool = True,
) -> CouplingIntervention:
    """Train the confined coupling and save it to `out_dir` (coupling.safetensors + coupling.json)."""
    out_dir = Path(out_dir)
    config = config.resolved(model.n_layers)
    slots = config.slots
    if not slots or any(not 0 <= s < model.n_layers for s in slots):
        raise HarcError(f"coupling slots must be block inputs 0..{model.n_layers - 1}, got {slots}")
    d.check_model(model)
    coupling = new_coupling(model, d, tuple(sorted(slots)), config)
    slots, n = coupling.slots, len(coupling.slots)
    stages = []
    for k, slot in enumerate(slots):
        work = out_dir / "work" if n == 1 else out_dir / "work" / f"slot{slot}"
        coords, responses = slot_data(model, d, coupling, k, sets, work, config, progress)
        validate = (
            validation_refusals(model, coupling, sets, coords, config) if config.margin is None else None
        )
        where = out_dir if n == 1 else work
        stages.append(train_slot(coupling, k, d, coords, responses, config, where, progress, validate))
    coupling.meta |= {
        "plane_separability": {"positions": stages[0]["separability"]["positions"]}
        | {name: row for st in stages for name, row in st["separability"].items() if name != "positions"},
        "mode": "subspace",
        "config": asdict(config),
        "directions_selected_layer": d.selected_layer,
        "standardisation": {str(s): st["standardisation"] for s, st in zip(slots, stages, strict=True)},
        "n_examples": stages[0]["n_examples"],
        "final_losses": {
            str(s): st["log"][-1] if st["log"] else None for s, st in zip(slots, stages, strict=True)
        },
        "objective": {str(s): st["objective"] for s, st in zip(slots, stages, strict=True)},
        "margin": {str(s): st["margin"] for s, st in zip(slots, stages, strict=True)},
        "calibration": {
            str(s): st["calibration"] for s, st in zip(slots, stages, strict=True) if st["calibration"]
        },
        "trained": now(),
        "provenance": provenance(model),
    }
    rows = [row | {"slot": s} for s, st in zip(slots, stages, strict=True) for row in st["log"]]
    coupling.save(out_dir)
    write_json(out_dir / "train_summary.json", {"log": rows, "meta": coupling.meta})
    return coupling


def new_coupling(
    model: HarcModel, d: Directions, slots: tuple[int, ...], config: SubspaceConfig
) -> CouplingIntervention:
    """An untrained coupling at `slots`: every map starts as the exact identity, so the coupling's hooks
    only act at slots trained so far."""
    probe = formatter_for(model, config.system_prompt).format("x")
    n_span = probe.n_prompt - probe.t_inst  # t_inst … t_post
    n_roles = (n_span if config.position_maps else 1) + (1 if config.response_tokens else 0)
    return CouplingIntervention.from_directions(
        d,
        slots,
        torch.zeros(len(slots), n_roles, 2),
        torch.ones(len(slots), n_roles, 2),
        config.hidden,
        seed=config.train.seed,
        first_response_role=n_span if config.response_tokens else -1,
        n_span=n_span if config.span_context else 0,
        # A shared span-reading map edits t_post only; position maps edit every span token.
        first_edited_role=n_span - 1 if config.span_context and not config.position_maps else 0,
        read_slots=tuple(sorted(config.read_slots or ())),  # checked by the coupling, before any forward pass
    )


def slot_data(
    model: HarcModel,
    d: Directions,
    coupling: CouplingIntervention,
    k: int,
    sets: dict[str, PromptSet],
    work: Path,
    config: SubspaceConfig,
    progress: bool,
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """The training coordinates of the map at `coupling.slots[k]`, cached in `work` (the forward passes
    are the slow part): span coordinates at the read slots and this slot, with the maps upstream of it
    active, and with a response map the response-token coordinates."""
    slots, read_slots = coupling.slots, coupling.read_slots
    key = {
        "slots": list(slots[: k + 1]),
        **({"read_slots": list(read_slots)} if read_slots else {}),
        "ids": {name: ps.ids for name, ps in sets.items()},
        "fingerprint": model.fingerprint,
        **({"upstream_config": asdict(config)} if k else {}),  # upstream maps depend on it
    }
    args = (config.batch_size, config.system_prompt, progress)
    coords = cached_tensors(
        work / "coordinates.safetensors",
        key,
        lambda: plane_coordinates_dataset(
            model, d, (*read_slots, slots[k]), sets, *args, attack_slot=slots[0], hooks=coupling.hooks(model)
        ),
    )
    if not config.response_tokens:
        return coords, None
    responses = cached_tensors(
        work / "response_coordinates.safetensors",
        key | {"response_tokens": config.response_tokens},
        lambda: response_coordinates_dataset(
            model, d, slots[k], sets, config.response_tokens, slots[0], *args, hooks=coupling.hooks(model)
        ),
    )
    return coords, responses


def validation_refusals(
    model: HarcModel,
    coupling: CouplingIntervention,
    sets: dict[str, PromptSet],
    coords: dict[str, Tensor],
    config: SubspaceConfig,
) -> Callable[[float | None, Path], dict]:
    """The margin calibration's check: a function of (the candidate margin in place, None for the
    uncoupled model, only logged; a cache file) that answers the validation rows (the rows `split_rows`
    holds out of training, at most `calibration_rows` per group) under the coupling as it stands and
    returns the judged refusal rate of the safe ones (harmless and borderline) and of each group, and
    their mean next-token KL at t_post against the coupling as it was when the check was made (this
    slot's map still the identity). A result is kept in its cache file under a key of the model, the
    coupling's weights and the rows, so a resumed run answers no candidate twice."""
    _, val = split_rows(coords, config.validation_fraction, config.train.seed)
    rows = {
        g: PromptSet(
            sets[g].name, tuple(sets[g].prompts[i] for i in val[g][: config.calibration_rows].tolist())
        )
        for g in (*HARMLESS_LIKE, "harmful", "jailbreak")
        if g in val and len(val[g])
    }
    if not any(g in rows for g in HARMLESS_LIKE):
        raise HarcError("no harmless or borderline validation rows to calibrate the margin on")
    safe = [p for g in HARMLESS_LIKE if g in rows for p in rows[g].prompts]
    chats = formatter_for(model, config.system_prompt).format_many(
        [p.prompt for p in safe], ids=[p.id for p in safe]
    )

    def logprobs() -> Tensor:
        variant = Variant(hooks=coupling.hooks(model), name="coupling")
        with variant.context():
            return last_token_logprobs(model, chats, hooks=variant.hooks, batch_size=config.batch_size)

    before = logprobs()  # the coupling before this slot's map is trained (it is the identity now)
    key = {
        "model": model.fingerprint,
        "before": coupling.weights_digest(),
        "rows": json_digest({g: [(p.id, p.prompt) for p in r.prompts] for g, r in rows.items()}),
        "tokens": config.calibration_tokens,
        "system_prompt": config.system_prompt,
    }

    def check(margin: float | None, cache: Path) -> dict:
        result = cached_json(cache, answer, key=key | {"coupling": coupling.weights_digest()})
        log.info(
            "calibration, %s: validation safe refusal %.2f, KL %.3f",
            "uncoupled" if margin is None else f"margin {margin:g}",
            result["safe_refusal"],
            result["safe_kl"],
        )
        return result

    def answer() -> dict:
        rates = refusal_rates(
            model,
            Variant(hooks=coupling.hooks(model), name="coupling"),
            rows,
            system_prompt=config.system_prompt,
            max_new_tokens=config.calibration_tokens,
            batch_size=config.batch_size,
        )
        return {
            "safe_refusal": pooled_rate(rates, rows, HARMLESS_LIKE),
            "refusal": rates,
            "safe_kl": float(kl_divergence(before, logprobs()).mean()),
        }

    return check


def split_rows(
    coords: dict[str, Tensor], fraction: float, seed: int
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(train rows, validation rows) per condition. The permutation depends only on the number of rows,
    so conditions over the same prompts (plain harmful and its white-box variants) split alike."""
    train, val = {}, {}
    for name, z in coords.items():
        perm = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))
        n_val = int(z.shape[0] * fraction)
        train[name], val[name] = perm[n_val:].sort().values, perm[:n_val].sort().values
    return train, val


def train_slot(
    coupling: CouplingIntervention,
    k: int,
    d: Directions,
    coords: dict[str, Tensor],
    responses: dict[str, Tensor] | None,
    config: SubspaceConfig,
    out_dir: Path,
    progress: bool,
    validate: Callable[[float | None, Path], dict] | None = None,
) -> dict:
    """Train the map at `coupling.slots[k]` on cached span coordinates [prompt, slot, position, 2] (the
    read slots, then this slot last) and, with a response map, response-token coordinates [prompt, token,
    2] (NaN past a response's end), the same prompts in the same order. Without a `margin`, one map per
    candidate of `margin_grid` that a bisection reaches trains on the training rows, and `validate(margin, file)`
    (run with each candidate in place; see `validation_refusals`) gives its validation safe refusal rate
    and KL; of the candidates that meet the rule, the calibration keeps the one whose validation
    jailbreaks are refused most (`pick_margin`; each candidate's checkpoint under `out_dir/calibration/`).
    Returns what the coupling's metadata records: the margin and the calibration behind it,
    separability, standardisation, example counts, the objective at init, trained and on the validation
    rows, and the training log."""
    slot = coupling.slots[k]
    train_rows, val_rows = split_rows(coords, config.validation_fraction, config.train.seed)
    held_out = {name: z[val_rows[name]] for name, z in coords.items() if len(val_rows[name])}
    held_out_responses = {
        name: z[val_rows[name]] for name, z in (responses or {}).items() if name in held_out
    }
    coords = {name: z[train_rows[name]] for name, z in coords.items()}
    if responses is not None:
        responses = {name: z[train_rows[name]] for name, z in responses.items()}
    calibrating = config.margin is None
    if calibrating and validate is None:
        raise HarcError("calibrating the margin needs a validation check (validate=)")
    # this slot's map is still the identity
    plain = validate(None, out_dir / "calibration" / "uncoupled.json") if calibrating else None
    trials, candidates = [], []

    def fit(margin: float) -> None:
        plane_map = copy.deepcopy(coupling.maps[k])  # the untrained map: every candidate starts alike
        where = out_dir / "calibration" / f"margin_{margin:g}" if calibrating else out_dir
        trial = _fit_map(
            plane_map, d, slot, coords, responses, replace(config, margin=margin), where, progress
        )
        if held_out:
            trial["objective"]["validation"] = trial["fit"].summary(held_out, held_out_responses)
        trials.append((margin, plane_map, trial))
        if calibrating:
            candidates.append(
                _check_candidate(coupling.maps[k], plane_map, validate, where, plain, margin, trial, config)
            )

    calibration = None
    if calibrating:
        # Bisection over the sorted grid: safe refusal and KL rise with the margin, so the largest margin
        # that meets the rule is found with log2(len(grid)) candidates instead of all of them.
        grid = sorted(config.margin_grid)
        meets, breaks = -1, len(grid)  # grid[meets] met the rule (-1: none yet); grid[breaks] broke it
        while breaks - meets > 1:
            mid = (meets + breaks) // 2
            fit(grid[mid])
            meets, breaks = (mid, breaks) if candidates[-1]["meets_rule"] else (meets, mid)
        margin, met = pick_margin(candidates)
        exhausted = met and margin == grid[-1]
        if exhausted:
            log.warning(
                "slot %d: the largest margin of the grid (%g) met the rule; a larger one might too "
                "(extend --set subspace.margin_grid=...)",
                slot,
                margin,
            )
        if not met:
            log.warning(
                "slot %d: even margin %g raised the validation safe prompts' refusal by more than %g or their "
                "KL above %g; kept it",
                slot,
                margin,
                config.over_refusal_tolerance,
                config.kl_budget,
            )
        calibration = {
            "rule": f"among the grid's margins (searched by bisection) whose validation harmless and "
            f"borderline refusal rate rises by at most {config.over_refusal_tolerance:g} over the uncoupled "
            f"model ({config.calibration_tokens} greedy tokens, phrase judge) and whose mean t_post KL on "
            f"them stays within {config.kl_budget:g}, the one whose validation jailbreaks are refused most "
            f"(ties: the largest)",
            "met": met,
            "grid_exhausted": exhausted,
            "uncoupled": plain,
            "candidates": candidates,
        }
    else:
        margin = config.margin
        fit(margin)
    _, plane_map, trial = next(t for t in trials if t[0] == margin)
    coupling.maps[k].load_state_dict(plane_map.state_dict())
    objective = trial.pop("fit")
    valid = {name: ~torch.isnan(z[..., 0]) for name, z in (responses or {}).items()}
    this_slot = {name: z[:, -1:] for name, z in coords.items()}
    return trial | {
        "margin": margin,
        "calibration": calibration,
        "separability": plane_separability(this_slot, (slot,), seed=config.train.seed),
        "standardisation": {
            "response_lo": None if objective.resp_lo is None else float(objective.resp_lo),
            "lo": objective.lo.tolist(),
            "hi": objective.hi.tolist(),
            "separation": objective.separation.tolist(),
            "constrained": objective.reads.tolist(),
        },
        "n_examples": {name: int(z.shape[0]) for name, z in coords.items()}
        | {f"{name}_response_tokens": int(v.sum()) for name, v in valid.items()}
        | {f"{name}_validation": int(z.shape[0]) for name, z in held_out.items()},
    }


def _fit_map(plane_map, d, slot, coords, responses, config: SubspaceConfig, out_dir: Path, progress) -> dict:
    """Standardise and train one map (in place) at `config.margin`: {fit (the objective), objective
    (at init and trained), log}."""
    objective = fit_slot_objective(
        plane_map, d, slot, coords, responses, Margins.of(config), config.min_separation
    )

    def loss_fn(step: int, gen: torch.Generator):
        rows = {
            name: torch.randint(z.shape[0], (min(config.batch_per_condition, z.shape[0]),), generator=gen)
            for name, z in coords.items()
        }  # the same rows for the span and the responses: a span-reading map needs both
        return objective(
            {name: coords[name][r] for name, r in rows.items()},
            {name: z[rows[name]] for name, z in (responses or {}).items()},
        )

    at_init = objective.summary(coords, responses or {})
    # What shapes this map's loss: the calibration's own fields choose among maps, and a checkpoint
    # trained at this margin stays valid when only they change (a wider grid reuses the finished ones).
    settings = {"slot": slot} | {k: v for k, v in asdict(config).items() if k not in CALIBRATION_FIELDS}
    log_rows = train_loop(plane_map, loss_fn, config.train, out_dir, progress=progress, settings=settings)
    trained = objective.summary(coords, responses or {})
    return {"fit": objective, "objective": {"at_init": at_init, "trained": trained}, "log": log_rows}


def _check_candidate(
    live_map, plane_map, validate, where: Path, plain: dict, margin: float, trial: dict, config
) -> dict:
    """One calibration row: the validation refusal rates with `plane_map` in the coupling (the live map
    restored after; kept in `where/validation.json`), the rise over `plain`, and the plane movement and
    read-outs (for the record)."""
    untrained = copy.deepcopy(live_map.state_dict())
    live_map.load_state_dict(plane_map.state_dict())
    try:
        check = validate(margin, where / "validation.json")
    finally:
        live_map.load_state_dict(untrained)
    rise = check["safe_refusal"] - plain["safe_refusal"]
    return {
        "margin": margin,
        **check,
        "safe_rise": rise,
        "meets_rule": rise <= config.over_refusal_tolerance + 1e-9 and check["safe_kl"] <= config.kl_budget,
        "safe_movement": safe_movement(trial["objective"]["validation"]),
    } | attacked_readouts(trial)


def safe_movement(summary: dict) -> float:
    """The most any safe condition (harmless, borderline) moves in an objective summary: mean
    ‖(f(z) − z) / σ‖² at t_post or over response tokens, whichever is larger."""
    rows = [summary["refusal_readouts"][n] for n in HARMLESS_LIKE if n in summary["refusal_readouts"]]
    if not rows:
        raise HarcError("no harmless or borderline validation rows to calibrate the margin on")
    return max(max(r["t_post_movement"], r.get("response_movement", 0.0)) for r in rows)


def attacked_readouts(trial: dict) -> dict:
    """Validation t_post refusal read-outs after the map, per harmful-like condition (for the record)."""
    read = trial["objective"]["validation"]["refusal_readouts"]
    return {f"{n}_t_post": read[n]["t_post"][1] for n in HARMFUL_LIKE if n in read}


def pick_margin(candidates: list[dict]) -> tuple[float, bool]:
    """(margin, whether it met the rule) from calibration rows in any order: among the margins that met
    the rule below the smallest that broke it, the one whose validation jailbreaks were refused most
    (`refusal["jailbreak"]`; ties and rows without jailbreaks: the largest margin); the smallest margin
    tried, unmet, when none met it. Attack refusal need not rise with the margin: on the 1.5B model the
    validation jailbreaks were refused 0.94 at margin 3 and 0.28 at 6 and 8, safe prompts unmoved by all."""
    broke = min((c["margin"] for c in candidates if not c["meets_rule"]), default=float("inf"))
    met = [c for c in candidates if c["meets_rule"] and c["margin"] < broke]
    if not met:
        return min(c["margin"] for c in candidates), False
    best = max(met, key=lambda c: (c.get("refusal", {}).get("jailbreak", 0.0), c["margin"]))
    return best["margin"], True
