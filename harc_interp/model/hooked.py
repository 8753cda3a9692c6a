"""The hooked model: raw Hugging Face weights with TransformerLens-named residual hooks.

`load_model` accepts a built-in offline alias, a local Hugging Face directory, a `.gguf` file, or a
hub id. It returns a `HarcModel`: the unmodified HF model (the fast path for caching, generation
and training), its tokenizer, and a TransformerLens `TransformerBridge` over the same weights
(`model.bridge`, for notebooks). Hooks are addressed by TransformerLens names
(`blocks.{l}.hook_resid_pre`, `blocks.{l}.hook_resid_post`) and implemented as plain PyTorch hooks
on the HF decoder layers, which cost nothing on GPU where the bridge's wrappers do.
"""

from __future__ import annotations

import contextlib
import copy
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from ..errors import HarcError
from .fingerprint import files_fingerprint, tensors_fingerprint
from .offline import DEFAULT_MODEL, OFFLINE_MODELS, cache_root, resolve_model_dir

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(
    spec: str | Path | nn.Module = DEFAULT_MODEL,
    *,
    tokenizer=None,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
    progress: bool = True,
) -> HarcModel:
    """Load a chat model with raw (unprocessed) weights.

    spec: a built-in alias (`qwen2.5-coder-0.5b-instruct`, `qwen2.5-coder-1.5b-instruct`), a local
    HF directory, a `.gguf` file, a hub id (needs network), or an HF causal LM already in memory (pass
    its `tokenizer`; it is used as it is, on its own device and dtype). CPU float32 is the default.
    `device_map` ("auto", "balanced", or a dict of module name → device, as transformers takes it)
    spreads a model too large for one GPU over the GPUs (then CPU memory, then disk) with accelerate,
    instead of `device`; hooks, caching, generation and couplings work across the devices.
    `progress=False` hides the weight-loading bar."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not isinstance(spec, str | Path):
        return _wrap_in_memory(spec, tokenizer)
    dtype = _resolve_dtype(dtype)
    device = resolve_device(device) if device_map is None else None
    source, name = resolve_model_dir(str(spec))
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(source)
        placement = {} if device_map is None else {"device_map": device_map}
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement)
    except OSError as e:
        if isinstance(source, Path):
            raise HarcError(f"could not load the model in {source}: {e}") from e
        raise HarcError(
            f"could not load '{spec}' from the Hugging Face hub ({e.__class__.__name__}). Offline, "
            f"download it on a machine with network (`hf download {spec} --local-dir DIR`) and pass "
            f"--model DIR, or use a built-in offline model: {', '.join(OFFLINE_MODELS)}"
        ) from e
    finally:
        if not progress:
            hf_logging.enable_progress_bar()
    files = source if isinstance(source, Path) else _hub_snapshot(str(source))
    fingerprint = (
        None if files is None else files_fingerprint(files, hf.config, cache_root() / "fingerprints")
    )
    hf = (hf if device is None else hf.to(device)).eval()
    hf.requires_grad_(False)
    return HarcModel(hf, tokenizer, name=name, source=str(source), fingerprint=fingerprint)


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise HarcError(f"dtype '{dtype}' is not one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device that exists on this machine, or an error that says which ones do."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise HarcError(f"device {device!r} is not a torch device: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise HarcError(f"device {device!r}: CUDA is not available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HarcError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise HarcError(f"device {device!r}: MPS is not available on this machine; use --device cpu")
    return dev


def _wrap_in_memory(hf: nn.Module, tokenizer) -> HarcModel:
    if not hasattr(hf, "config") or not callable(getattr(hf, "forward", None)):
        raise HarcError(
            f"load_model takes a model name, a path, or an HF causal LM in memory; got {type(hf).__name__}"
        )
    if tokenizer is None:
        raise HarcError("an in-memory model needs its tokenizer: load_model(model, tokenizer=tokenizer)")
    hf.eval().requires_grad_(False)
    name = getattr(hf.config, "_name_or_path", "") or type(hf).__name__
    return HarcModel(hf, tokenizer, name=str(name), source=str(name))


def _hub_snapshot(repo: str) -> Path | None:
    """The local snapshot folder of a hub model that was just loaded (its files are there), if found."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # not in the hub cache layout: fingerprint the tensors instead
        return None


@dataclass
class Span:
    """The span of the batch running through the model: which positions an intervention may edit and
    what each one is (`roles` [batch, pos]: -1 outside, 0 = t_inst, 1, 2, ... after it, as
    `Batch.span_role`), and `memory`, a dict that lives exactly as long as the batch: a hook that must
    see the prompt again at its decoding steps (a coupling that reads the span's coordinates) keeps it
    there, and it cannot leak into the next batch. Decoding steps (fewer positions than the prompt) are
    all in the span, after the prompt."""

    roles: torch.Tensor
    memory: dict = field(default_factory=dict)

    def roles_for(self, resid: torch.Tensor) -> torch.Tensor | None:
        """[batch, pos] roles of a residual of this batch, or None at a decoding step."""
        if resid.shape[1] != self.roles.shape[1]:
            return None
        return self.roles.to(resid.device)

    def weights_for(self, resid: torch.Tensor) -> torch.Tensor | None:
        """[batch, pos, 1] weights (1 inside the span), or None at a decoding step (edit every position)."""
        roles = self.roles_for(resid)
        return None if roles is None else (roles >= 0).to(resid.dtype)[..., None]


@dataclass(frozen=True)
class HookSite:
    """What a hook function learns about where it runs: the TransformerLens-style name, the block, and
    the span of the running batch (None when the caller declared none: every position may be edited)."""

    name: str
    layer: int
    span: Span | None = None

    def span_roles(self, resid: torch.Tensor) -> torch.Tensor | None:
        """[batch, pos] span roles of this residual (-1 outside the span), or None without a span or at a
        decoding step."""
        return None if self.span is None else self.span.roles_for(resid)

    def span_weights(self, resid: torch.Tensor) -> torch.Tensor | None:
        """[batch, pos, 1] weights, 1 inside the span, or None without a span or at a decoding step (edit
        every position)."""
        return None if self.span is None else self.span.weights_for(resid)


HookFn = Callable[[torch.Tensor, HookSite], torch.Tensor | None]
_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)$")


def resid_hook_name(slot: int, n_layers: int) -> str:
    """Residual slot s in 0..n_layers: block input for s < n_layers, last block's output for s = n_layers."""
    if not 0 <= slot <= n_layers:
        raise HarcError(f"layer slot {slot} is out of range 0..{n_layers}")
    if slot < n_layers:
        return f"blocks.{slot}.hook_resid_pre"
    return f"blocks.{n_layers - 1}.hook_resid_post"


def _find_decoder_layers(hf: nn.Module, n_layers: int) -> nn.ModuleList:
    """The decoder's ModuleList of blocks, found by shape rather than by a per-family attribute name."""
    candidates = [m for m in hf.modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if not candidates:
        raise HarcError(f"could not find the {n_layers} decoder blocks in {type(hf).__name__}")
    return candidates[0]


class HarcModel:
    """A chat model: raw HF weights + tokenizer, with TransformerLens-named residual hooks."""

    def __init__(self, hf: nn.Module, tokenizer, *, name: str, source: str, fingerprint: str | None = None):
        if fingerprint is not None:
            self.__dict__["fingerprint"] = fingerprint  # known from the weight files: skip hashing tensors
        self.hf = hf
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
        self.text_config = cfg  # the decoder's config (multimodal models nest it)
        self.n_layers: int = cfg.num_hidden_layers
        self.d_model: int = cfg.hidden_size
        self.context_length: int | None = getattr(cfg, "max_position_embeddings", None)
        self.blocks = _find_decoder_layers(hf, self.n_layers)
        self._span: Span | None = None  # the running batch's, while a `span` context is open

    @property
    def device(self) -> torch.device:
        """Where inputs go: the device the weights are on or, for a model spread by a device map, its
        first accelerator (accelerate's hooks move each block's inputs to that block's device)."""
        placed = getattr(self.hf, "hf_device_map", None)
        if placed:
            gpus = [d for d in placed.values() if d not in ("cpu", "disk")]
            return torch.device(gpus[0]) if gpus else torch.device("cpu")
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights."""
        return next(self.hf.parameters()).dtype

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of every weight (and the architecture), so artifacts from another model are refused:
        from the weight files for a model loaded from disk, else from the tensors (`model.fingerprint`)."""
        return tensors_fingerprint(self.hf)

    @cached_property
    def bridge(self):
        """A TransformerLens TransformerBridge over the same weights (no copy of the parameters).

        The bridge replaces the HF model's submodules with its wrappers, so it is built on a shadow
        copy of the module tree whose parameters and buffers are the original tensors.
        """
        from transformer_lens.model_bridge import TransformerBridge

        shared = {id(t): t for t in [*self.hf.parameters(), *self.hf.buffers()]}
        shadow = copy.deepcopy(self.hf, shared)
        return TransformerBridge.boot_transformers(
            self.source, tokenizer=self.tokenizer, hf_model=shadow, dtype=self.dtype, device=str(self.device)
        )

    def hook_module(self, name: str) -> tuple[nn.Module, str, int]:
        """The HF module behind a TL hook name, and whether to hook its input ('pre') or output."""
        match = _HOOK_NAME.match(name)
        if not match:
            raise HarcError(
                f"hook name '{name}' is not supported: use blocks.{{l}}.hook_resid_pre|resid_post|attn_out|"
                "mlp_out (TransformerLens names); for every other hook use model.bridge"
            )
        layer, kind = int(match.group(1)), match.group(2)
        if layer >= self.n_layers:
            raise HarcError(f"hook '{name}': layer {layer} does not exist (model has {self.n_layers})")
        block = self.blocks[layer]
        if kind == "resid_pre":
            return block, "pre", layer
        if kind == "resid_post":
            return block, "post", layer
        # Sandwich-norm blocks (Gemma 2/3) normalise each sublayer's output before the residual add: what
        # the block writes into the residual stream is that norm's output, as TransformerLens hooks it.
        # (In Llama-style blocks `post_attention_layernorm` is the MLP's *input* norm: no
        # `pre_feedforward_layernorm` tells them apart.)
        sandwich = isinstance(getattr(block, "pre_feedforward_layernorm", None), nn.Module)
        if sandwich:
            attr = ("post_attention_layernorm",) if kind == "attn_out" else ("post_feedforward_layernorm",)
        else:
            attr = ("self_attn", "attn", "attention") if kind == "attn_out" else ("mlp", "feed_forward")
        sub = next((getattr(block, a) for a in attr if isinstance(getattr(block, a, None), nn.Module)), None)
        if sub is None:
            raise HarcError(f"hook '{name}': block {type(block).__name__} has no {'/'.join(attr)} submodule")
        return sub, "post", layer

    @contextlib.contextmanager
    def span(self, roles: torch.Tensor | None) -> Iterator[Span | None]:
        """Declare the span of the batch about to run (`Batch.span_role`; the package's forward and
        generate helpers do): every hook then receives it as `site.span` until the block exits."""
        previous = self._span
        self._span = None if roles is None else Span(roles)
        try:
            yield self._span
        finally:
            self._span = previous

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str, HookFn]] = ()) -> Iterator[HarcModel]:
        """Run with `fn(resid, site)` hooks at TransformerLens residual names; removed on exit.

        A hook may return a new tensor to replace the residual (interventions) or None (reading).
        Hooks stay active through `generate`, for the prompt and every decoding step.
        """
        handles = []
        try:
            for name, fn in fwd_hooks:
                module, kind, layer = self.hook_module(name)
                site = self._site_for(name, layer)
                if kind == "pre":
                    handles.append(module.register_forward_pre_hook(_pre_hook(fn, site), with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(_post_hook(fn, site)))
            yield self
        finally:
            for h in handles:
                h.remove()

    @contextlib.contextmanager
    def resumed(self, slot: int, resid: torch.Tensor) -> Iterator[HarcModel]:
        """Run blocks `slot`… only, from `resid` (the residual at block `slot`'s input, [batch, pos,
        d_model], e.g. cached from an unedited pass): blocks below it pass their input through and
        block `slot` receives `resid` instead. Exact when nothing below `slot` is edited; hooks below
        it would not run, so `hook_layers_from` refuses them."""
        if not 0 <= slot < self.n_layers:
            raise HarcError(f"cannot resume at slot {slot}: block inputs are 0..{self.n_layers - 1}")

        def substitute(module, args, kwargs):
            if args:
                return (resid, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": resid}

        skipped = list(self.blocks[:slot])
        # accelerate's dispatch (a device map) wraps a block's forward in an instance attribute of its own
        wrapped = [block.__dict__.get("forward") for block in skipped]
        handle = self.blocks[slot].register_forward_pre_hook(substitute, with_kwargs=True, prepend=True)
        try:
            for block in skipped:  # an instance attribute shadows the class's forward
                block.forward = _pass_through
            yield self
        finally:
            handle.remove()
            for block, forward in zip(skipped, wrapped, strict=True):
                if forward is None:
                    del block.forward
                else:
                    block.forward = forward

    def hook_layers_from(self, hooks: Sequence[tuple[str, HookFn]], slot: int) -> None:
        """Refuse hooks that act below block `slot` (a resumed pass does not run them)."""
        below = [name for name, _ in hooks if self.hook_module(name)[2] < slot]
        if below:
            raise HarcError(f"hooks {below} act below slot {slot}: this pass cannot resume from there")

    def _site_for(self, name: str, layer: int) -> Callable[[], HookSite]:
        """The site a hook sees, built when it runs: the span is the batch's, not the registration's."""
        return lambda: HookSite(name, layer, self._span)


def _pass_through(hidden_states, *args, **kwargs):
    return hidden_states


def _pre_hook(fn: HookFn, site: Callable[[], HookSite]):
    def hook(module, args, kwargs):
        if args:
            new = fn(args[0], site())
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"], site())
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return hook


def _post_hook(fn: HookFn, site: Callable[[], HookSite]):
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden, site())
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook
