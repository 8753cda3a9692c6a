"""Model loading: sources, clear errors, GGUF integrity checks."""

from __future__ import annotations

import hashlib

import pytest
import torch

import harc_interp.model.offline as offline_mod
from harc_interp import HarcError, load_model
from harc_interp.model import resid_hook_name
from harc_interp.model.offline import OfflineModel, assemble_gguf


def test_local_dir_loads_with_raw_weights(tiny, tiny_dir):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_dir)
    for (name, a), (_, b) in zip(tiny.hf.named_parameters(), plain.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert tiny.n_layers == 4 and tiny.d_model == 64
    assert load_model(str(tiny_dir)).fingerprint == tiny.fingerprint


def test_bad_specs_give_clear_errors(tmp_path):
    with pytest.raises(HarcError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(HarcError, match="does not exist"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(HarcError, match="dtype 'float8'"):
        load_model(str(tmp_path), dtype="float8")
    with pytest.raises(HarcError, match="hf download some-org/some-model"):
        load_model("some-org/some-model")  # offline in tests: the hub is unreachable


def test_hook_names_are_checked(tiny):
    assert resid_hook_name(4, 4) == "blocks.3.hook_resid_post"
    with pytest.raises(HarcError, match="not supported"):
        with tiny.hooks([("blocks.0.attn.hook_z", lambda r, s: None)]):
            pass
    with pytest.raises(HarcError, match="layer 7 does not exist"):
        with tiny.hooks([("blocks.7.hook_resid_pre", lambda r, s: None)]):
            pass


def _fake_chunks(tmp_path, monkeypatch, parts):
    files = []
    for i, data in enumerate(parts):
        f = tmp_path / f"part{i}.bin"
        f.write_bytes(data)
        files.append(f)
    monkeypatch.setattr(offline_mod, "chunk_files", lambda spec: files)
    whole = b"".join(parts)
    return OfflineModel("fake", "x/y", ("a", "b"), "1", hashlib.sha256(whole).hexdigest(), len(whole), "fake")


def test_gguf_assembly_checks_size_and_hash(tmp_path, monkeypatch):
    spec = _fake_chunks(tmp_path, monkeypatch, [b"GGUF" + b"a" * 100, b"b" * 50])
    out = assemble_gguf(spec, tmp_path / "m.gguf")
    assert out.read_bytes() == b"GGUF" + b"a" * 100 + b"b" * 50
    bad_hash = OfflineModel(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(HarcError, match="SHA-256 .* corrupt"):
        assemble_gguf(bad_hash, tmp_path / "m2.gguf")
    truncated = OfflineModel(**{**spec.__dict__, "size": spec.size + 1})
    with pytest.raises(HarcError, match="truncated"):
        assemble_gguf(truncated, tmp_path / "m3.gguf")
    assert not (tmp_path / "m2.gguf").exists() and not (tmp_path / "m3.partial").exists()


def test_missing_chunk_package_says_how_to_install():
    spec = OfflineModel("fake", "x/y", ("harc-no-such-package-part1",), "1", "", 0, "fake")
    with pytest.raises(HarcError, match=r"pip install 'harc-interp\[fake\]'"):
        offline_mod.chunk_files(spec)
