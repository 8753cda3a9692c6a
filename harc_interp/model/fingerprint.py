"""Model fingerprints: a digest of every weight, so an artifact (cache, directions, coupling) made on
one model is never resumed or used on another, not even on a fine-tune that shares its embeddings.

A model loaded from files is fingerprinted from its weight files (streamed once, then cached by path,
size and modification time, so later loads cost a stat); one built in memory from its tensors. Both
digests also cover the architecture (model type, layers, width, vocabulary)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ..artifacts import write_json
from ..errors import HarcError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _architecture(config) -> bytes:
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    return json.dumps([cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size]).encode()


def tensors_fingerprint(module: nn.Module) -> str:
    """sha256 over the architecture and every parameter and persistent buffer (name, shape, dtype, bytes)."""
    digest = hashlib.sha256(_architecture(module.config))
    seen: set[int] = set()
    for name, t in module.state_dict().items():
        if t.data_ptr() in seen and t.numel():  # tied weights: hashed once
            continue
        seen.add(t.data_ptr())
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        view = flat.view(torch.int16) if flat.dtype in (torch.bfloat16, torch.float16) else flat
        digest.update(view.numpy() if view.dtype != torch.bool else view.to(torch.uint8).numpy())
    return digest.hexdigest()


def weight_files(model_dir: Path) -> list[Path]:
    """The weight files of a model folder (.safetensors, .bin, .pt, .pth), sorted."""
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


def files_fingerprint(model_dir: Path, config, cache_dir: Path | None = None) -> str:
    """sha256 over the architecture and the weight files of a model directory; cached in `cache_dir`
    under a key of the files' paths, sizes and modification times (a changed file is hashed anew)."""
    files = weight_files(model_dir)
    if not files:
        raise HarcError(f"{model_dir} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha256(json.dumps(stats).encode() + _architecture(config)).hexdigest()
    cached = cache_dir / f"{key}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        try:
            return json.loads(cached.read_text())["fingerprint"]
        except (json.JSONDecodeError, KeyError, OSError):
            pass  # a damaged cache entry is recomputed
    digest = hashlib.sha256(_architecture(config))
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 24):
                digest.update(block)
    fingerprint = digest.hexdigest()
    if cached is not None:
        write_json(cached, {"fingerprint": fingerprint, "files": stats})
    return fingerprint
