"""Cache the residual stream at chosen layer slots and named positions, batched and streamed.

Slots are `0..n_layers`: slot l < n_layers is the input of block l (`blocks.{l}.hook_resid_pre`),
slot n_layers is the last block's output (`blocks.{L-1}.hook_resid_post`, before the final norm).
Named positions: `t_inst`, `t_post`, `post_instruction` (expands to `post_0..post_{k-1}`, the
template suffix tokens, `post_{k-1}` = t_post) and `response_mean` (mean over the first
`n_response` response tokens). Only the hooks and positions asked for are kept, moved to CPU
float32 per batch, and the forward pass stops after the last slot needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..artifacts import (
    TensorRows,
    check_schema,
    load_tensors,
    now,
    open_tensor_mmap,
    read_json,
    save_tensors,
    stamp_schema,
    versions,
    write_json,
    write_tensor_stream,
)
from ..data.chat import ChatPrompt, formatter_for, left_pad, pad_token_id
from ..data.prompts import Prompt, PromptSet
from ..errors import HarcError
from ..model.hooked import HarcModel, HookFn, resid_hook_name
from ..shapes import CachedBatch, CachedResid
from .forward import SharedPrefix, StopForward, forward_batch, shared_prefix, split_prefix

log = logging.getLogger(__name__)

POSITIONS = ("t_inst", "t_post", "post_instruction", "response_mean")
# activations.json: 2 records the run key and the compute and storage dtypes (1: neither, still read).
SCHEMA_VERSION = 2


@dataclass(frozen=True)
class CacheConfig:
    """What to cache. layers=None means every slot 0..n_layers."""

    layers: tuple[int, ...] | None = None
    positions: tuple[str, ...] = ("t_inst", "t_post")
    n_response: int = 32
    batch_size: int = 16
    shard_size: int = 256
    system_prompt: str | None = None

    def __post_init__(self):
        unknown = [p for p in self.positions if p not in POSITIONS]
        if unknown or not self.positions:
            raise HarcError(f"unknown positions {unknown}; choose from {POSITIONS}")
        if len(set(self.positions)) != len(self.positions):
            raise HarcError(f"positions repeat: {self.positions}")
        if self.batch_size < 1 or self.shard_size < 1 or self.n_response < 1:
            raise HarcError("batch_size, shard_size and n_response must be positive")
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers)):
            raise HarcError(f"layers must be distinct slot indices, got {self.layers}")


@dataclass(frozen=True)
class Activations:
    """Cached residuals `resid[prompt, layer, position, d_model]` with their labels and provenance."""

    resid: CachedResid
    layers: tuple[int, ...]
    positions: tuple[str, ...]
    prompt_ids: tuple[str, ...]
    meta: dict

    def at(self, layer: int, position: str) -> Float[Tensor, "prompt d_model"]:
        """Residuals [prompt, d_model] at one cached layer slot and position."""
        if layer not in self.layers:
            raise HarcError(f"layer slot {layer} was not cached; cached slots: {self.layers}")
        if position not in self.positions:
            raise HarcError(f"position '{position}' was not cached; cached: {self.positions}")
        return self.resid[:, self.layers.index(layer), self.positions.index(position)]

    @classmethod
    def load(cls, out_dir: str | Path) -> Activations:
        """Open a cache; `resid` is memory-mapped (read-only), so opening costs no memory."""
        out_dir = Path(out_dir)
        meta = read_json(out_dir / "activations.json")
        check_schema(meta, "activations", SCHEMA_VERSION, out_dir / "activations.json", "harc cache")
        resid = open_tensor_mmap(out_dir / "activations.safetensors", "resid")
        expected = (len(meta["prompt_ids"]), len(meta["layers"]), len(meta["positions"]), meta["d_model"])
        if tuple(resid.shape) != expected:
            raise HarcError(f"{out_dir}: resid has shape {tuple(resid.shape)}, sidecar says {expected}")
        return cls(resid, tuple(meta["layers"]), tuple(meta["positions"]), tuple(meta["prompt_ids"]), meta)


def position_names(positions: Sequence[str], n_post: int) -> list[str]:
    """Position names as cached: `post_instruction` expands to one `post_k` per template-suffix token."""
    names = []
    for p in positions:
        names += [f"post_{k}" for k in range(n_post)] if p == "post_instruction" else [p]
    return names


def _positions_index(prompts: Sequence[ChatPrompt], offset: Tensor, positions: Sequence[str], n_post: int):
    """Padded token index per (prompt, single position) and response-mean weights per token."""
    single: list[list[int]] = []
    for p in prompts:
        row = []
        for name in positions:
            if name == "t_inst":
                row.append(p.t_inst)
            elif name == "t_post":
                row.append(p.t_post)
            elif name == "post_instruction":
                row += list(p.post_instruction)
        single.append(row)
    index = torch.tensor(single, dtype=torch.long).reshape(len(prompts), -1) + offset[:, None]
    return index


def _response_weights(prompts: Sequence[ChatPrompt], offset: Tensor, width: int, n_response: int) -> Tensor:
    weights = torch.zeros(len(prompts), width)
    for b, p in enumerate(prompts):
        resp = p.response_positions[:n_response]
        if not resp:
            raise HarcError(
                f"position 'response_mean' needs a response, prompt {p.instruction[:60]!r} has none"
            )
        weights[b, torch.tensor(resp) + offset[b]] = 1.0 / len(resp)
    return weights


def residuals_for_batch(
    model: HarcModel,
    prompts: Sequence[ChatPrompt],
    slots: Sequence[int],
    positions: Sequence[str],
    n_response: int = 32,
    hooks: Sequence[tuple[str, HookFn]] = (),
    prefix: SharedPrefix | None = None,
) -> CachedBatch:
    """One left-padded forward pass; returns float32 CPU residuals at the named positions.

    `hooks` (an intervention) run before the capture hooks, so the cache sees their effect. With
    `prefix` (a `SharedPrefix` under the same hooks) the prompts hold the tokens after it."""
    n_post = len(prompts[0].post_instruction)
    for p in prompts:
        if "post_instruction" in positions and len(p.post_instruction) != n_post:
            raise HarcError(
                f"prompt {p.instruction[:60]!r} has {len(p.post_instruction)} post-instruction tokens, "
                f"others have {n_post}: its end merges with the template suffix"
            )
    batch = left_pad(prompts, pad_token_id(model.tokenizer), with_response="response_mean" in positions)
    device = model.device
    index = _positions_index(prompts, batch.offset, positions, n_post).to(device)
    weights = None
    if "response_mean" in positions:
        weights = _response_weights(prompts, batch.offset, batch.input_ids.shape[1], n_response).to(device)
    names = position_names(positions, n_post)
    out = torch.empty(len(prompts), len(slots), len(names), model.d_model)
    rows = torch.arange(len(prompts), device=device)[:, None]
    deepest = max(slots)

    def capture(slot_pos: int, slot: int):
        def fn(resid: Tensor, site) -> None:
            parts = []
            j = 0
            here = resid.device  # a device map puts blocks on several devices
            for name in positions:  # keep the order of `positions`
                if name == "response_mean":  # accumulated in float32 whatever the compute dtype
                    w = weights.to(here, torch.float32)
                    parts.append(torch.einsum("bt,btd->bd", w, resid.float())[:, None])
                else:
                    k = n_post if name == "post_instruction" else 1
                    parts.append(resid[rows.to(here), index[:, j : j + k].to(here)])
                    j += k
            out[:, slot_pos] = torch.cat(parts, dim=1).float().cpu()
            if slot == deepest:
                raise StopForward

        return fn

    captures = [(resid_hook_name(s, model.n_layers), capture(i, s)) for i, s in enumerate(slots)]
    forward_batch(model, batch, [*hooks, *captures], prefix=prefix)
    if not torch.isfinite(out).all():
        raise HarcError("non-finite residuals (NaN/inf): try float32 instead of a half dtype")
    return out


def _run_key(model: HarcModel, cfg: CacheConfig, slots, ps: PromptSet, prompts: Sequence[ChatPrompt]) -> str:
    """What a cache depends on: every weight, the compute dtype, slots, settings, prompts and tokens."""
    h = hashlib.sha256()
    settings = asdict(cfg) | {"batch_size": 0, "shard_size": 0}
    h.update(
        json.dumps(
            [model.fingerprint, str(model.dtype), list(slots), settings, ps.ids, [p.label for p in ps]]
        ).encode()
    )
    for p in prompts:
        h.update(json.dumps(p.all_ids).encode())
    return h.hexdigest()[:16]


def cache_residuals(
    model: HarcModel,
    prompts: PromptSet | Sequence[str],
    *,
    out_dir: str | Path | None = None,
    responses: Sequence[str | Sequence[int]] | None = None,
    config: CacheConfig = CacheConfig(),
    hooks: Sequence[tuple[str, HookFn]] = (),
    progress: bool = True,
    force: bool = False,
) -> Activations:
    """Cache residuals for a prompt set; with `out_dir`, stream shards to disk and resume a broken run.

    Writes `out_dir/activations.safetensors` (`resid[prompt, layer, position, d_model]`) and
    `out_dir/activations.json` (model, template hash, layers, positions, hook names, prompt ids,
    labels, dtypes, versions). A finished cache of the same run is returned as it is; one of another run
    (model weights, prompts or settings differ) is refused unless `force`. `hooks` caches the residuals
    of an intervened model (in memory only)."""
    if hooks and out_dir is not None:
        raise HarcError("caching under an intervention is in memory only: pass out_dir=None")
    ps = prompts if isinstance(prompts, PromptSet) else PromptSet("prompts", tuple(_as_prompts(prompts)))
    if len(ps) == 0:
        raise HarcError("no prompts to cache")
    fmt = formatter_for(model, config.system_prompt)
    chats = fmt.format_many(ps.texts, responses, ids=ps.ids)
    slots = tuple(range(model.n_layers + 1)) if config.layers is None else tuple(config.layers)
    for s in slots:
        resid_hook_name(s, model.n_layers)  # range check with a clear message
    names = position_names(config.positions, len(chats[0].post_instruction))
    order = sorted(
        range(len(chats)), key=lambda i: -len(chats[i].all_ids)
    )  # longest first: peak memory early
    meta = _cache_meta(model, ps, fmt.template_hash, config, slots, names)
    shape = (len(chats), len(slots), len(names), model.d_model)
    with tqdm(total=len(chats), desc="caching residuals", unit="prompt", disable=not progress) as bar:

        def batches(idx: list[int]):
            """(position in `idx`, residuals) of the prompts `idx`, a batch at a time; the template
            prefix they share (no cached position lies in it) runs once."""
            prefix_ids, rest = split_prefix(model, chats)
            prefix = shared_prefix(model, prefix_ids, hooks)
            for i in range(0, len(idx), config.batch_size):
                chunk = [rest[j] for j in idx[i : i + config.batch_size]]
                yield (
                    i,
                    residuals_for_batch(
                        model, chunk, slots, config.positions, config.n_response, hooks, prefix=prefix
                    ),
                )
                bar.update(len(chunk))

        if out_dir is None:
            resid = torch.empty(shape)
            for i, acts in batches(order):
                resid[order[i : i + len(acts)]] = acts
            return Activations(resid, slots, tuple(names), tuple(ps.ids), meta | {"created": now()})
        run_key = _run_key(model, config, slots, ps, chats)
        if _finished(Path(out_dir), run_key, force):
            return Activations.load(out_dir)
        _write_shards(Path(out_dir), run_key, order, config.shard_size, shape, batches, bar)
    _assemble(Path(out_dir), _shards(order, config.shard_size), shape, meta | {"run_key": run_key})
    shutil.rmtree(Path(out_dir) / "shards")
    return Activations.load(out_dir)


def _cache_meta(
    model: HarcModel, ps: PromptSet, template_hash: str, config: CacheConfig, slots, names
) -> dict:
    return {
        "model": model.name,
        "model_fingerprint": model.fingerprint,
        "template_hash": template_hash,
        "system_prompt": config.system_prompt,
        "layers": list(slots),
        "hook_names": [resid_hook_name(s, model.n_layers) for s in slots],
        "positions": names,
        "n_response": config.n_response,
        "d_model": model.d_model,
        "prompt_ids": ps.ids,
        "labels": [p.label for p in ps.prompts],
        "attack_classes": [p.attack_class for p in ps.prompts],
        "compute_dtype": str(model.dtype).removeprefix("torch."),
        "storage_dtype": "float32",
        "device": str(model.device),
        "versions": versions(),
        "command": " ".join(sys.argv),
    }


def _finished(out_dir: Path, run_key: str, force: bool) -> bool:
    """Whether `out_dir` already holds this run's finished cache; a finished cache of another run is an
    error unless `force` (then it is replaced)."""
    meta_path = out_dir / "activations.json"
    if not meta_path.is_file():
        return False
    if read_json(meta_path).get("run_key") == run_key:
        return True
    if not force:
        raise HarcError(
            f"{out_dir} holds a finished cache of another run (model weights, prompts or settings differ): "
            "choose a new --out, or pass --force to replace it"
        )
    shutil.rmtree(out_dir / "shards", ignore_errors=True)
    return False


def _shards(order: list[int], shard_size: int) -> list[list[int]]:
    return [order[i : i + shard_size] for i in range(0, len(order), shard_size)]


def _write_shards(out_dir: Path, run_key: str, order, shard_size: int, shape, batches, bar) -> None:
    """Every shard of the cache under `out_dir/shards/`; shards a killed run of the same key finished
    are kept (a corrupt one is recomputed); a folder holding another run's shards is refused."""
    shard_dir = out_dir / "shards"
    state_path = shard_dir / "run.json"
    if state_path.is_file() and read_json(state_path).get("run_key") != run_key:
        raise HarcError(
            f"{out_dir} holds an unfinished cache of a different run (model, prompts or settings "
            "differ): choose a new --out or delete its shards/ folder"
        )
    write_json(state_path, {"run_key": run_key, "created": now()})
    for k, shard in enumerate(_shards(order, shard_size)):
        path = shard_dir / f"shard_{k:05d}.safetensors"
        if path.is_file():
            try:
                if load_tensors(path)["index"].tolist() == shard:
                    bar.update(len(shard))
                    continue
            except HarcError:
                log.warning("re-computing corrupt shard %s", path)
        resid = torch.empty(len(shard), *shape[1:])
        for i, acts in batches(shard):
            resid[i : i + len(acts)] = acts
        save_tensors(path, {"resid": resid, "index": torch.tensor(shard)})


def _assemble(out_dir: Path, shards: list[list[int]], shape, meta: dict) -> None:
    """Stream shards into one file in the original prompt order (memory: one prompt at a time; the
    shards are read with file reads, not mapped, so the pages read do not pile up in this process)."""
    where = {}
    files = [
        TensorRows(out_dir / "shards" / f"shard_{k:05d}.safetensors", "resid") for k in range(len(shards))
    ]
    for k, shard in enumerate(shards):
        for row, original in enumerate(shard):
            where[original] = (k, row)

    def rows():
        for i in range(shape[0]):
            k, row = where[i]
            yield files[k].rows(row, row + 1)

    try:
        write_tensor_stream(out_dir / "activations.safetensors", "resid", shape, torch.float32, rows())
    finally:
        for f in files:
            f.close()
    write_json(
        out_dir / "activations.json", stamp_schema(meta | {"created": now()}, "activations", SCHEMA_VERSION)
    )


def _as_prompts(texts: Sequence[str]):
    for i, t in enumerate(texts):
        yield Prompt(f"prompt-{i}", t)
