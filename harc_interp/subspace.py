"""Training the confined coupling (subspace mode): data are plane coordinates, the model stays frozen.

At each coupling slot we cache the plane coordinates of every span position (t_inst and the template
suffix) for plain harmful prompts, harmful prompts under white-box single-direction suppression
(v_ref or v_harm ablated in every block upstream of the first coupling slot), jailbreak prompts, and
harmless and borderline prompts. The objective, in standardised coordinates s (0 = harmless mean,
1 = plain-harmful mean, per axis (refused or not); harmfulness read at t_inst, refusal at t_post as in HARC):

    harmful-like:  relu(m − s_ref) + relu(m − s_harm) + relu(s⁰ − s) (lowering a read-out costs: with the
                   hinge alone the map pulled already-refused prompts down to the margin); m is
                   `plain_margin` for plain harmful prompts when set
    harmless-like: relu(s_ref − m_safe) + ρ · relu(s_ref − s⁰_ref) + λ · ‖(f(z) − z) / σ‖²  (retention;
                   ρ = `safe_raise_weight` charges any rise of a safe prompt's refusal read-out)

Span-reading maps also read the span's coordinates at `read_slots` (cached beside the slot's own).

Borderline prompts are about harmful topics, so only their refusal coordinate is constrained.
Response tokens have a map of their own (`response_tokens` > 0), trained on the model's own first
response tokens under every condition with the refusal read-out only: harmful-like responses pushed
`response_margin` t_post gaps above the harmless responses' mean (plain harmful ones
`plain_response_margin` when set), harmless-like ones held as above.
With `position_maps`, each span token gets a map of its own and is standardised on its own; the same
hinges then also apply at every token and axis where plain harmful and harmless prompts differ.

Because f only sees the plane, training needs no backward pass through the model: seconds on a CPU.
With several slots the maps train in order, shallowest first: a slot's coordinates are cached with the
already-trained maps upstream of it active, so the maps compose as they will run. (Maps trained
independently and then stacked moved harmless residuals far off: KL 2.7 on the real model.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from .activations import CacheConfig, StopForward, cache_residuals, forward_batch
from .artifacts import load_tensors, now, read_json, save_tensors, write_json
from .chat import formatter_for, left_pad, pad_token_id
from .coupling import CouplingIntervention, plane_basis_matrix
from .directions import Directions
from .errors import HarcError
from .generate import generate
from .interventions import ablation_hooks
from .model import HarcModel, HookFn, resid_hook_name
from .plane import basis_from_directions
from .prompts import PromptSet
from .train import TrainConfig, train_loop

log = logging.getLogger(__name__)

HARMFUL_LIKE = ("harmful", "harmful_ablate_ref", "harmful_ablate_harm", "jailbreak")
HARMLESS_LIKE = ("harmless", "borderline")


@dataclass(frozen=True)
class SubspaceConfig:
    slots: tuple[int, ...] | None = None  # None: the directions' selected layer
    hidden: int = 32
    margin: float = 0.8  # harmful-like prompts reach 80% of the way to the plain-harmful mean
    safe_margin: float = 0.5  # harmless/borderline refusal coordinate stays below halfway
    # Cost per gap of raising a harmless/borderline prompt's refusal read-out at all (the mirror of the
    # harmful-like "lowering costs"). The margin hinge is free below `safe_margin`, and retention is
    # quadratic, so small rises on prompts the model answers only just were nearly free.
    safe_raise_weight: float = 0.0
    # Plain harmful prompts' margin (None: `margin`). The model already refuses them mostly, and they sit
    # next to the borderline prompts in the plane, so pushing them as hard as the attacked prompts
    # (jailbreaks, white-box suppression) lifts the borderline prompts with them.
    plain_margin: float | None = None
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
    # Plain harmful prompts' response margin (None: `response_margin`), for the same reason as `plain_margin`.
    plain_response_margin: float | None = None
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
    read_slots: tuple[int, ...] = ()
    # Share of each condition's cached prompts held out of training; the summary reports the objective
    # and read-outs on them, to calibrate margins and retention without touching evaluation prompts.
    validation_fraction: float = 0.0
    batch_per_condition: int = 64
    train: TrainConfig = TrainConfig(steps=1500, lr=1e-2, checkpoint_every=250, log_every=50)
    batch_size: int = 16  # forward batches when caching coordinates
    system_prompt: str | None = None


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
    for name, (ps, attack) in _conditions(model, d, sets, min(slots) if attack_slot is None else attack_slot):
        acts = cache_residuals(model, ps, config=cfg, hooks=[*attack, *hooks], progress=progress)
        out[name] = torch.einsum("nlpd,ldk->nlpk", acts.resid, bases)
    return out


def _conditions(model: HarcModel, d: Directions, sets: dict[str, PromptSet], attack_slot: int):
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
    basis = plane_basis_matrix(d, slot)
    fmt = formatter_for(model, system_prompt)
    out = {}
    for name, (ps, attack) in _conditions(model, d, sets, attack_slot):
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
        coords = torch.full((len(chats), n_tokens, 2), float("nan"))
        for start in range(0, len(chats), batch_size):
            chunk = chats[start : start + batch_size]
            batch = left_pad(chunk, pad_token_id(model.tokenizer), with_response=True)
            seen = {}

            def capture(resid, site, seen=seen):
                seen["z"] = resid.float() @ basis.to(resid.device)
                raise StopForward  # the layers above the slot are not needed

            forward_batch(model, batch, [*run_hooks, (resid_hook_name(slot, model.n_layers), capture)])
            for b, chat in enumerate(chunk):
                pos = torch.tensor(chat.response_positions[:n_tokens], dtype=torch.long) + batch.offset[b]
                coords[start + b, : len(pos)] = seen["z"][b, pos.to(seen["z"].device)].cpu()
        out[name] = coords
    return out


def oblique_coordinates(e: Tensor, z: Tensor) -> Tensor:
    """Plane coordinates [..., 2] (orthonormal basis) → oblique read-outs [..., 2]: (z·v̂_harm, z·v̂_ref),
    with e [2 (harm, ref), 2] the unit directions in that basis."""
    return z @ e.T


def standardisation(
    d: Directions, slot: int, coords: dict[str, Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """At `slot`: oblique read-out vectors e [2 (harm, ref), 2] in the plane basis; per span position the
    harmless (lo) and plain-harmful (hi) means of the oblique read-outs [position, 2], and their
    separation (hi − lo) / pooled std [position, 2]."""
    pb = basis_from_directions(d, slot)
    e = (pb.units @ pb.basis.T).float()  # rows: v̂_harm, v̂_ref in the orthonormal basis
    harmless = oblique_coordinates(e, coords["harmless"][:, 0])  # [n, position, 2]
    harmful = oblique_coordinates(e, coords["harmful"][:, 0])
    lo, hi = harmless.mean(0), harmful.mean(0)
    spread = torch.cat([harmless - lo, harmful - hi]).std(0).clamp_min(1e-12)
    if (hi[0, 0] - lo[0, 0]).abs() < 1e-6 or (hi[-1, 1] - lo[-1, 1]).abs() < 1e-6:
        raise HarcError("harmful and harmless prompts have the same plane coordinates at a coupling slot")
    return e, lo, hi, (hi - lo) / spread


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
    slots = config.slots or (d.selected_layer,)
    if any(s is None or not 0 <= s < model.n_layers for s in slots):
        raise HarcError(f"coupling slots must be block inputs 0..{model.n_layers - 1}, got {slots}")
    d.check_model(model)
    slots = tuple(sorted(slots))
    # Every map starts as the exact identity, so the coupling's hooks only act at slots trained so far.
    n = len(slots)
    if config.response_tokens < 0:
        raise HarcError(f"response_tokens must be >= 0, got {config.response_tokens}")
    read_slots = tuple(sorted(config.read_slots))  # checked by the coupling, built before any forward pass
    if not 0 <= config.validation_fraction < 1:
        raise HarcError(f"validation_fraction must be in [0, 1), got {config.validation_fraction}")
    probe = formatter_for(model, config.system_prompt).format("x")
    n_span = probe.n_prompt - probe.t_inst  # t_inst … t_post
    n_roles = (n_span if config.position_maps else 1) + (1 if config.response_tokens else 0)
    coupling = CouplingIntervention.from_directions(
        d,
        slots,
        torch.zeros(n, n_roles, 2),
        torch.ones(n, n_roles, 2),
        config.hidden,
        seed=config.train.seed,
        first_response_role=n_span if config.response_tokens else -1,
        n_span=n_span if config.span_context else 0,
        # A shared span-reading map edits t_post only; position maps edit every span token.
        first_edited_role=n_span - 1 if config.span_context and not config.position_maps else 0,
        read_slots=read_slots,
    )
    stages = []
    for k, slot in enumerate(slots):
        work = out_dir / "work" if n == 1 else out_dir / "work" / f"slot{slot}"
        key = {
            "slots": list(slots[: k + 1]),
            **({"read_slots": list(read_slots)} if read_slots else {}),
            "ids": {name: ps.ids for name, ps in sets.items()},
            "fingerprint": model.fingerprint,
            **({"upstream_config": asdict(config)} if k else {}),  # upstream maps depend on it
        }
        coords_path = work / "coordinates.safetensors"
        if coords_path.is_file() and read_json(work / "coordinates.json") == json.loads(json.dumps(key)):
            coords = load_tensors(coords_path)  # resume: the forward passes are the slow part
        else:
            coords = plane_coordinates_dataset(
                model,
                d,
                (*read_slots, slot),
                sets,
                config.batch_size,
                config.system_prompt,
                progress,
                attack_slot=slots[0],
                hooks=coupling.hooks(model),
            )
            save_tensors(coords_path, coords)
            write_json(work / "coordinates.json", key)
        responses = None
        if config.response_tokens:
            resp_key = key | {"response_tokens": config.response_tokens}
            resp_path = work / "response_coordinates.safetensors"
            if resp_path.is_file() and read_json(work / "response_coordinates.json") == json.loads(
                json.dumps(resp_key)
            ):
                responses = load_tensors(resp_path)
            else:
                responses = response_coordinates_dataset(
                    model,
                    d,
                    slot,
                    sets,
                    config.response_tokens,
                    slots[0],
                    config.batch_size,
                    config.system_prompt,
                    progress,
                    hooks=coupling.hooks(model),
                )
                save_tensors(resp_path, responses)
                write_json(work / "response_coordinates.json", resp_key)
        stages.append(
            _train_slot(coupling, k, d, coords, responses, config, out_dir if n == 1 else work, progress)
        )
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
        "trained": now(),
    }
    rows = [row | {"slot": s} for s, st in zip(slots, stages, strict=True) for row in st["log"]]
    coupling.save(out_dir)
    write_json(out_dir / "train_summary.json", {"log": rows, "meta": coupling.meta})
    return coupling


def _split_rows(
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


def _train_slot(
    coupling: CouplingIntervention,
    k: int,
    d: Directions,
    coords: dict[str, Tensor],
    responses: dict[str, Tensor] | None,
    config: SubspaceConfig,
    out_dir: Path,
    progress: bool,
) -> dict:
    """Train the map at `coupling.slots[k]` on cached span coordinates [prompt, slot, position, 2] (the
    read slots, then this slot last) and, with a response map, response-token coordinates [prompt, token,
    2] (NaN past a response's end), the same prompts in the same order."""
    slot = coupling.slots[k]
    plane_map = coupling.maps[k]
    train_rows, val_rows = _split_rows(coords, config.validation_fraction, config.train.seed)
    held_out = {name: z[val_rows[name]] for name, z in coords.items() if len(val_rows[name])}
    held_out_responses = {
        name: z[val_rows[name]] for name, z in (responses or {}).items() if name in held_out
    }
    coords = {name: z[train_rows[name]] for name, z in coords.items()}
    if responses is not None:
        responses = {name: z[train_rows[name]] for name, z in responses.items()}
    this_slot = {name: z[:, -1:] for name, z in coords.items()}  # [prompt, 1, position, 2]
    e, lo, hi, separation = standardisation(d, slot, this_slot)
    n_pos = lo.shape[0]
    roles = torch.arange(n_pos)
    edited = roles >= int(plane_map.first_edited_role)
    # HARC's reads: harmfulness at t_inst, refusal at t_post; per-position maps also get every position
    # and axis where harmful and harmless prompts differ (elsewhere a target would be noise). Only
    # edited tokens can be moved, so only they are read.
    reads = torch.zeros(n_pos, 2, dtype=torch.bool)
    n_span_maps = plane_map.n_roles - (1 if responses is not None else 0)
    if n_span_maps > 1:
        reads |= separation >= config.min_separation
    reads[0, 0] = reads[-1, 1] = True
    reads &= edited[:, None]
    gap = torch.where(reads, hi - lo, torch.ones_like(lo))  # unread entries may have no gap at all
    span_maps = plane_map.map_index(roles, (n_pos,))
    every = torch.cat([z[:, -1] for z in coords.values()])  # [prompt, position, 2], every condition
    with torch.no_grad():
        for m in range(n_span_maps):  # one map: its positions pooled
            own = every[:, (span_maps == m) & edited].reshape(-1, 2)
            plane_map.mu[m], plane_map.sigma[m] = own.mean(0), own.std(0).clamp_min(1e-6)
        if plane_map.n_context:
            every_read = torch.cat([z.flatten(1, 2) for z in coords.values()])  # [prompt, context, 2]
            plane_map.context_mu.copy_(every_read.mean(0))
            plane_map.context_sigma.copy_(every_read.std(0).clamp_min(1e-6))
    sigma_span = plane_map.sigma[span_maps]
    if responses is not None:
        valid = {name: ~torch.isnan(z[..., 0]) for name, z in responses.items()}
        if "harmless" not in valid or not valid["harmless"].any():
            raise HarcError("no harmless response tokens to anchor the response map on")
        pooled = torch.cat([z[valid[name]] for name, z in responses.items()])
        resp_lo = oblique_coordinates(e, responses["harmless"][valid["harmless"]]).mean(0)[1]
        with torch.no_grad():
            plane_map.mu[-1], plane_map.sigma[-1] = pooled.mean(0), pooled.std(0).clamp_min(1e-6)

    def map_span(span: Tensor) -> Tensor:  # [b, slot, position, 2] → this slot's, mapped (unedited kept)
        zb = span[:, -1]
        context = span.flatten(1, 2)[:, None].expand(-1, n_pos, -1, -1) if plane_map.n_context else None
        return torch.where(edited[:, None], plane_map(zb, roles.expand(zb.shape[0], -1), context), zb)

    def own_margin(name: str, plain: float | None, attacked: float) -> float:  # plain harmful's own, if set
        return plain if name == "harmful" and plain is not None else attacked

    def span_loss(name: str, span: Tensor) -> Tensor:
        zb, mapped = span[:, -1], map_span(span)
        # 0 = harmless mean, 1 = harmful mean; before and after the map
        before, s = ((oblique_coordinates(e, z) - lo) / gap for z in (zb, mapped))
        if name in HARMFUL_LIKE:  # on the scale of HARC's two hinges; lowering a read-out costs
            margin = own_margin(name, config.plain_margin, config.margin)
            return 2 * torch.relu(margin - s[:, reads]).mean() + torch.relu(before - s)[:, reads].mean()
        retention = ((mapped - zb) / sigma_span).pow(2).sum(-1)[:, edited].mean()
        refusal = torch.relu(s[:, reads[:, 1], 1] - config.safe_margin).mean()
        rise = torch.relu(s - before)[:, reads[:, 1], 1].mean()
        return refusal + config.safe_raise_weight * rise + config.retention_weight * retention

    def refusal_in_responses(z: Tensor) -> Tensor:  # in t_post's refusal gaps above harmless responses
        return (oblique_coordinates(e, z)[:, 1] - resp_lo) / gap[-1, 1]

    def map_responses(zr: Tensor, span: Tensor) -> tuple[Tensor, Tensor]:
        """Response tokens [b, token, 2] (NaN past the end) of prompts with span coordinates [b, slot,
        position, 2] → (valid tokens [n, 2], mapped [n, 2]); the response map serves decoding steps."""
        ok = ~torch.isnan(zr[..., 0])
        span = span.flatten(1, 2)
        context = span[:, None].expand(-1, zr.shape[1], -1, -1)[ok] if plane_map.n_context else None
        return zr[ok], plane_map(zr[ok], context=context)

    def response_loss(name: str, zr: Tensor, span: Tensor) -> Tensor:
        zr, mapped = map_responses(zr, span)
        if not zr.shape[0]:
            return torch.zeros(())
        before, s = refusal_in_responses(zr), refusal_in_responses(mapped)
        if name in HARMFUL_LIKE:
            margin = own_margin(name, config.plain_response_margin, config.response_margin)
            return torch.relu(margin - s).mean() + torch.relu(before - s).mean()
        retention = ((mapped - zr) / plane_map.sigma[-1]).pow(2).sum(-1).mean()
        rise = torch.relu(s - before).mean()
        return (
            torch.relu(s - config.safe_margin).mean()
            + config.safe_raise_weight * rise
            + config.retention_weight * retention
        )

    def objective(batches: dict[str, Tensor], resp_batches: dict[str, Tensor]) -> tuple[Tensor, dict]:
        parts = {name: span_loss(name, span) for name, span in batches.items()}
        parts |= {
            f"{name}_response": response_loss(name, zr, batches[name]) for name, zr in resp_batches.items()
        }
        total = sum(parts.values(), torch.zeros(()))
        return total, {name: float(v.detach()) for name, v in parts.items()}

    def loss_fn(step: int, gen: torch.Generator):
        rows = {
            name: torch.randint(z.shape[0], (min(config.batch_per_condition, z.shape[0]),), generator=gen)
            for name, z in coords.items()
        }  # the same rows for the span and the responses: a span-reading map needs both
        return objective(
            {name: coords[name][r] for name, r in rows.items()},
            {name: z[rows[name]] for name, z in (responses or {}).items()},
        )

    def t_post_refusal(z: Tensor) -> float:  # mean, in harmful-harmless gaps
        return round(float(((oblique_coordinates(e, z[:, -1]) - lo[-1]) / gap[-1])[:, 1].mean()), 3)

    def summary(span_sets: dict[str, Tensor], resp_sets: dict[str, Tensor]) -> dict:
        """The objective over every given example; per condition the mean refusal read-outs before → after
        the map (t_post; responses in t_post's gaps above harmless responses) and the mean squared movement
        ‖(f(z) − z) / σ‖² of t_post and of response tokens (what retention charges on safe prompts)."""
        with torch.no_grad():
            total, parts = objective(span_sets, resp_sets)
            readouts = {}
            for name, span in span_sets.items():
                z, mapped = span[:, -1], map_span(span)
                row = {
                    "t_post": [t_post_refusal(z), t_post_refusal(mapped)],
                    "t_post_movement": round(
                        float(((mapped - z)[:, -1] / sigma_span[-1]).pow(2).sum(-1).mean()), 4
                    ),
                }
                if name in resp_sets:
                    zr, mapped_r = map_responses(resp_sets[name], span)
                    row["responses"] = [
                        round(float(refusal_in_responses(x).mean()), 3) for x in (zr, mapped_r)
                    ]
                    row["response_movement"] = round(
                        float(((mapped_r - zr) / plane_map.sigma[-1]).pow(2).sum(-1).mean()), 4
                    )
                readouts[name] = row
        return parts | {"total": float(total), "refusal_readouts": readouts}

    at_init = summary(coords, responses or {})
    separability = plane_separability(this_slot, (slot,), seed=config.train.seed)
    log_rows = train_loop(
        plane_map,
        loss_fn,
        config.train,
        out_dir,
        progress=progress,
        settings={"slot": slot, **asdict(config)},
    )
    objective_report = {"at_init": at_init, "trained": summary(coords, responses or {})}
    if held_out:
        objective_report["validation"] = summary(held_out, held_out_responses)
    return {
        "separability": separability,
        "standardisation": {
            "response_lo": float(resp_lo) if responses is not None else None,
            "lo": lo.tolist(),
            "hi": hi.tolist(),
            "separation": separation.tolist(),
            "constrained": reads.tolist(),
        },
        "n_examples": {name: int(z.shape[0]) for name, z in coords.items()}
        | {
            f"{name}_response_tokens": int(v.sum())
            for name, v in (valid if responses is not None else {}).items()
        }
        | {f"{name}_validation": int(z.shape[0]) for name, z in held_out.items()},
        "objective": objective_report,
        "log": log_rows,
    }
