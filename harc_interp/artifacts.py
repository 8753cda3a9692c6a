"""Artifacts on disk: safetensors + JSON sidecars, written atomically, with provenance."""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import HarcError

_ST_DTYPES = {
    torch.float32: "F32",
    torch.float64: "F64",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int64: "I64",
}


def versions() -> dict[str, str]:
    """Installed versions of harc-interp, torch, transformers and transformer-lens (for provenance)."""
    out = {}
    for pkg in ("harc-interp", "torch", "transformers", "transformer-lens"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def stamp_schema(meta: dict, kind: str, version: int) -> dict:
    """`meta` with the artifact's schema name and version, so a later reader can migrate or refuse it."""
    return meta | {"schema": f"harc_interp.{kind}", "schema_version": version}


def check_schema(meta: dict, kind: str, version: int, path: Path, rerun: str) -> int:
    """The schema version of a stored artifact of `kind`: artifacts written before schemas were
    recorded are version 1. Refuses another kind of artifact and one from a newer harc_interp, saying
    what to rerun."""
    name = meta.get("schema", f"harc_interp.{kind}")
    if name != f"harc_interp.{kind}":
        raise HarcError(f"{path} is a '{name}' artifact, not harc_interp.{kind}")
    found = int(meta.get("schema_version", 1))
    if found > version:
        raise HarcError(
            f"{path} has schema version {found}, newer than this harc_interp reads ({version}): upgrade "
            f"harc_interp, or rerun `{rerun}`"
        )
    return found


def provenance(model=None, **extra) -> dict:
    """Where an output came from: the model (name, full fingerprint, compute dtype, device), the
    package versions, the command line and the UTC time. Every JSON output carries it."""
    out: dict = {}
    if model is not None:
        out |= {
            "model": model.name,
            "model_fingerprint": model.fingerprint,
            "compute_dtype": str(model.dtype).removeprefix("torch."),
            "device": str(model.device),
        }
    return out | extra | {"versions": versions(), "command": " ".join(sys.argv), "created": now()}


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def tmp_beside(path: Path) -> Path:
    """A fresh temporary file next to `path` (same folder, so the final rename is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; artifacts are meant to be shared like any output
    return Path(tmp)


def write_json(path: str | Path, obj) -> Path:
    """Write JSON atomically: readers never see a half-written file."""
    path = Path(path)
    tmp = tmp_beside(path)
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """A text file (Markdown, a report), atomically."""
    path = Path(path)
    tmp = tmp_beside(path)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """JSON lines, atomically."""
    path = Path(path)
    tmp = tmp_beside(path)
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_json(path: str | Path) -> dict | list:
    """A JSON artifact; `HarcError` naming the file when it is missing, corrupt or truncated."""
    path = Path(path)
    if not path.is_file():
        raise HarcError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise HarcError(f"{path} is corrupt or truncated ({e}); re-create it") from None


def cached_json(path: str | Path, compute: Callable[[], object], *, key: object | None = None):
    """The JSON result at `path` when a finished run left it there, else `compute()` written atomically:
    the one resume rule of every cached step. With `key` (JSON-able: what the result depends on),
    the result is stored as {"key", "result"} and a file made under another key is recomputed."""
    path = Path(path)
    if path.is_file():
        stored = read_json(path)
        if key is None:
            return stored
        if isinstance(stored, dict) and stored.get("key") == _jsonable(key):
            return stored["result"]
    result = compute()
    write_json(path, result if key is None else {"key": key, "result": result})
    return result


def cached_tensors(
    path: str | Path, key: object, compute: Callable[[], dict[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Tensors at `path` (safetensors) when its sidecar `path.json` holds the same `key`, else
    `compute()` saved with that key: the resume rule for cached tensors (e.g. plane coordinates). A fresh
    result is returned as it reads back (contiguous), so a first run and its resume compute downstream
    statistics in the same summation order and reach bit-identical results."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if path.is_file() and sidecar.is_file() and read_json(sidecar) == _jsonable(key):
        return load_tensors(path)
    tensors = compute()
    save_tensors(path, tensors)
    write_json(sidecar, key)
    return load_tensors(path)


def _jsonable(obj):
    """`obj` as it reads back from JSON (tuples become lists, keys strings), for comparing keys."""
    return json.loads(json.dumps(obj))


def json_digest(obj) -> str:
    """sha256 of a JSON-able object (keys sorted): a short key for what a cached result depends on."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def weights_digest(folder: str | Path) -> str:
    """sha256 over the weight files at the top of an artifact folder and in its `adapter/` (a coupling's
    maps, a LoRA adapter, directions): what an evaluation of it depends on."""
    folder, digest = Path(folder), hashlib.sha256()
    for f in sorted([*folder.glob("*"), *folder.glob("adapter/*")]):
        if f.suffix in (".safetensors", ".bin") and f.is_file():
            digest.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return digest.hexdigest()


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """safetensors, atomically."""
    path = Path(path)
    tmp = tmp_beside(path)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o644)  # safetensors writes its file private; outputs are shared like the JSON beside them
    tmp.replace(path)
    return path


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors artifact as {name: tensor}; `HarcError` naming the file when it is missing, corrupt or
    truncated."""
    path = Path(path)
    if not path.is_file():
        raise HarcError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise HarcError(f"{path} is corrupt or truncated ({e}); re-create it") from None


def _f32_layout(path: Path, name: str) -> tuple[int, tuple[int, ...]] | None:
    """(byte offset, shape) of float32 tensor `name` in a safetensors file (None: another dtype);
    `HarcError` when the file is missing, corrupt or shorter than its header promises."""
    if not path.is_file():
        raise HarcError(f"{path} is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n)) if 0 < n < size else None
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError):
            header = None
    if not header or name not in header:
        raise HarcError(f"{path} is corrupt or truncated (no readable '{name}' entry); re-create it")
    info = header[name]
    if info["dtype"] != "F32":
        return None
    start, end = info["data_offsets"]
    expected = 4
    for s in info["shape"]:
        expected *= s
    if end - start != expected or 8 + n + end > size:
        raise HarcError(
            f"{path} is corrupt or truncated ({size} bytes, header promises {8 + n + end}); re-create it"
        )
    return 8 + n + start, tuple(info["shape"])


class TensorRows:
    """Rows (along dim 0) of one float32 tensor in a safetensors file, read with plain file reads: what
    was read stays in the OS page cache, not in this process's memory, as a memory map's pages would."""

    def __init__(self, path: str | Path, name: str):
        self.path = Path(path)
        layout = _f32_layout(self.path, name)
        if layout is None:
            raise HarcError(f"{self.path}: '{name}' is not float32")
        self.offset, self.shape = layout
        self.row_bytes = 4 * math.prod(self.shape[1:])
        self.file = open(self.path, "rb")  # noqa: SIM115 (closed by close())

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows `start:stop`, read now (a fresh tensor that owns its memory)."""
        self.file.seek(self.offset + start * self.row_bytes)
        raw = bytearray(self.file.read((stop - start) * self.row_bytes))
        return torch.frombuffer(raw, dtype=torch.float32).view(stop - start, *self.shape[1:])

    def close(self) -> None:
        """Close the file."""
        self.file.close()


def open_tensor_mmap(path: str | Path, name: str) -> torch.Tensor:
    """A read-only, memory-mapped view of one tensor in a safetensors file: nothing is read until
    it is used, so a large cache costs no memory to open."""
    import numpy as np

    path = Path(path)
    layout = _f32_layout(path, name)
    if layout is None:
        return load_tensors(path)[name]
    offset, shape = layout
    array = np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=shape)
    import warnings

    with warnings.catch_warnings():  # torch warns that the memmap is read-only; we never write to it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def write_tensor_stream(
    path: str | Path,
    name: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    chunks: Iterable[torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write one tensor to a safetensors file chunk by chunk along dim 0, so memory stays flat.

    The format is an 8-byte little-endian header length, a JSON header, then raw row-major bytes.
    """
    path = Path(path)
    elem = torch.empty((), dtype=dtype).element_size()
    nbytes = elem
    for s in shape:
        nbytes *= s
    header = {name: {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [0, nbytes]}}
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = tmp_beside(path)
    written = 0
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for chunk in chunks:
            if chunk.dtype != dtype or tuple(chunk.shape[1:]) != tuple(shape[1:]):
                tmp.unlink()
                raise HarcError(f"chunk {tuple(chunk.shape)} {chunk.dtype} does not fit {shape} {dtype}")
            data = (
                chunk.contiguous().numpy().tobytes()
                if dtype != torch.bfloat16
                else chunk.contiguous().view(torch.int16).numpy().tobytes()
            )
            f.write(data)
            written += len(data)
    if written != nbytes:
        tmp.unlink()
        raise HarcError(f"wrote {written} bytes for '{name}', expected {nbytes}")
    tmp.replace(path)
    return path
