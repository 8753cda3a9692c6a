"""Bad input as a hostile user gives it: every case ends in one `harc <verb>: error: ...` line that names
the problem (no traceback), and no finished work is lost, mixed or overwritten."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch

from harc_interp import CacheConfig, HarcError, cache_residuals, load_model, starter_prompts
from harc_interp.cli import main

LONG = " ".join(["word"] * 700)  # past the tiny model's 512-token context


def write(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def cache_argv(model, prompts, out, *extra):
    return [
        "cache",
        "--model",
        model,
        "--prompts",
        *prompts,
        "--out",
        out,
        "--layers",
        "1",
        "--quiet",
        *extra,
    ]


# Each row: (name, a function of (tmp_path, tiny_dir, directions_dir) giving argv, the message printed).
CASES = [
    ("non-UTF-8 file", lambda t, m, d: cache_argv(m, [write(t / "p.jsonl", b'{"prompt": "caf\xe9"}\n')], str(t / "o")),
     "is not UTF-8 text"),
    ("JSON lines in a .json file",
     lambda t, m, d: cache_argv(m, [write(t / "p.json", '{"prompt": "a"}\n{"prompt": "b"}\n')], str(t / "o")),
     "holds JSON lines (one object per line): rename it to .jsonl"),
    ("CSV without a header", lambda t, m, d: cache_argv(m, [write(t / "p.csv", "How do I bake bread?\nHi\n")], str(t / "o")),
     "has no 'prompt' column; the first line must name the columns"),
    ("ids repeated across two files",
     lambda t, m, d: cache_argv(m, [write(t / "a.jsonl", '{"id": "x", "prompt": "a"}\n'),
                                    write(t / "b.jsonl", '{"id": "x", "prompt": "b"}\n')], str(t / "o")),
     "prompt ids ['x'] occur in both"),
    ("--responses missing",
     lambda t, m, d: cache_argv(m, ["starter:harmless"], str(t / "o"), "--positions", "response_mean",
                                "--responses", str(t / "none.jsonl")),
     "does not exist"),
    ("--responses without a response field",
     lambda t, m, d: cache_argv(m, ["starter:harmless"], str(t / "o"), "--positions", "response_mean",
                                "--responses", write(t / "r.jsonl", '{"id": "b-0", "text": "hi"}\n')),
     ":1 needs an 'id' and a 'response' (text)"),
    ("--device cuda without CUDA", lambda t, m, d: cache_argv(m, ["starter:harmless"], str(t / "o"), "--device", "cuda"),
     "CUDA is not available on this machine"),
    ("--device gpu0", lambda t, m, d: cache_argv(m, ["starter:harmless"], str(t / "o"), "--device", "gpu0"),
     "is not a torch device"),
    ("--out is a file",
     lambda t, m, d: ["generate", "--model", m, "--prompts", "starter:harmless", "--out", write(t / "f", "x")],
     "is a file, not a folder"),
    ("--out cannot be written",
     lambda t, m, d: ["generate", "--model", m, "--prompts", "starter:harmless", "--out", "/proc/harc-out"],
     "cannot be written"),
    ("a bad --eval-fraction",
     lambda t, m, d: ["eval", "--model", m, "--directions", d, "--out", str(t / "o"), "--eval-fraction", "1.5"],
     "eval_fraction must be in (0, 1), got 1.5"),
    ("a mistyped relative model path",
     lambda t, m, d: cache_argv("tests/no-such-model", ["starter:harmless"], str(t / "o")),
     "model path tests/no-such-model does not exist"),
    ("a prompt file that does not exist, with a model that does not either",
     lambda t, m, d: ["plane", "--model", "./missing-model", "--directions", d, "--prompts", "nope.jsonl",
                      "--out", str(t / "o")],
     "prompt file nope.jsonl does not exist"),
    ("an over-long prompt",
     lambda t, m, d: cache_argv(m, [write(t / "p.jsonl", json.dumps({"id": "too-long", "prompt": LONG}) + "\n")],
                                str(t / "o")),
     "longer than the model's context of 512 tokens, e.g. 'too-long': shorten them or pass --skip-long"),
]  # fmt: skip


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_prints_one_clear_line(
    name, argv, message, tmp_path, tiny_dir, tiny_directions_dir, capsys
):
    assert main(argv(tmp_path, str(tiny_dir), str(tiny_directions_dir))) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


@pytest.mark.parametrize("limit", ["0", "-2"])
def test_limit_must_be_positive(limit, tmp_path, tiny_dir, capsys):
    with pytest.raises(SystemExit) as stop:
        main(cache_argv(str(tiny_dir), ["starter:harmless"], str(tmp_path), "--limit", limit))
    assert stop.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_per_class_two_skips_the_statistic_instead_of_crashing(
    tiny_dir, tiny_directions_dir, tmp_path, capsys
):
    argv = ["plane", "--model", str(tiny_dir), "--directions", str(tiny_directions_dir), "--prompts",
            "starter:harmful", "starter:harmless", "starter:attacks", "--per-class", "2", "--n-goals", "2",
            "--max-new-tokens", "2", "--n-permutations", "2", "--out", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    geometry = json.loads((tmp_path / "geometry.json").read_text())
    assert geometry["views"]["oblique"]["separability"]["accuracy"] is None  # every group too small
    assert "too few points per group" in geometry["views"]["oblique"]["separability"]["note"]


def test_ctrl_c_says_the_run_can_be_resumed(tmp_path, tiny_dir, capsys, monkeypatch):
    import harc_interp.capture.activations as activations

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(activations, "cache_residuals", interrupted)
    assert main(cache_argv(str(tiny_dir), ["starter:harmless"], str(tmp_path / "o"))) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "rerun the same command to resume" in err and "Traceback" not in err


def test_csv_with_a_byte_order_mark_and_blank_response_lines_load(tmp_path, tiny_dir, capsys):
    prompts = write(tmp_path / "p.csv", "\ufeffid,prompt\nq1,How do I bake bread?\nq2,Name a colour\n")
    responses = write(
        tmp_path / "r.jsonl", '{"id": "q1", "response": "Mix"}\n\n{"id": "q2", "response": "Blue"}\n\n'
    )
    argv = cache_argv(
        str(tiny_dir),
        [prompts],
        str(tmp_path / "o"),
        "--positions",
        "response_mean",
        "--responses",
        responses,
    )
    assert main(argv) == 0
    assert json.loads((tmp_path / "o" / "activations.json").read_text())["prompt_ids"] == ["q1", "q2"]


def test_skip_long_skips_with_a_count(tmp_path, tiny_dir, caplog):
    rows = [{"id": "ok", "prompt": "How do I bake bread?"}, {"id": "too-long", "prompt": LONG}]
    prompts = write(tmp_path / "p.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert main(cache_argv(str(tiny_dir), [prompts], str(tmp_path / "o"), "--skip-long")) == 0
    assert json.loads((tmp_path / "o" / "activations.json").read_text())["prompt_ids"] == ["ok"]
    assert "skipped 1 prompt(s) longer than the context (e.g. too-long)" in caplog.text


def test_quiet_hides_the_weight_loading_bar(tmp_path, tiny_dir, capfd):
    assert main(cache_argv(str(tiny_dir), ["starter:harmless"], str(tmp_path / "o"), "--limit", "2")) == 0
    assert "Loading weights" not in capfd.readouterr().err


def test_provenance_names_the_compute_dtype_and_the_whole_fingerprint(tmp_path, tiny_dir, tiny):
    argv = cache_argv(
        str(tiny_dir), ["starter:harmless"], str(tmp_path / "c"), "--limit", "2", "--dtype", "float16"
    )
    assert main(argv) == 0
    meta = json.loads((tmp_path / "c" / "activations.json").read_text())
    assert (meta["compute_dtype"], meta["storage_dtype"]) == ("float16", "float32")
    assert meta["model_fingerprint"] == tiny.fingerprint and len(tiny.fingerprint) == 64
    assert main(["generate", "--model", str(tiny_dir), "--prompts", "starter:harmless", "--limit", "2",
                 "--max-new-tokens", "2", "--out", str(tmp_path / "g"), "--quiet"]) == 0  # fmt: skip
    prov = json.loads((tmp_path / "g" / "generations.json").read_text())["provenance"]
    assert prov["model_fingerprint"] == tiny.fingerprint and prov["compute_dtype"] == "float32"
    assert set(prov) >= {"device", "versions", "command", "created"} and "transformers" in prov["versions"]
    # Tensors are shared like the JSON beside them.
    assert stat.S_IMODE(os.stat(tmp_path / "c" / "activations.safetensors").st_mode) == 0o644


def test_load_model_accepts_an_in_memory_model(tiny):
    wrapped = load_model(tiny.hf, tokenizer=tiny.tokenizer)
    assert wrapped.hf is tiny.hf and wrapped.n_layers == tiny.n_layers
    assert wrapped.fingerprint == load_model(tiny.hf, tokenizer=tiny.tokenizer).fingerprint
    with pytest.raises(HarcError, match="needs its tokenizer"):
        load_model(tiny.hf)
    with pytest.raises(HarcError, match="an HF causal LM in memory"):
        load_model(torch.nn.Linear(2, 2), tokenizer=tiny.tokenizer)


# ------------------------------------------------------------------------------------------------
# Regressions: mixed-model resume, silent overwrite, directions of another model


@pytest.fixture()
def fine_tune(tiny_dir, tmp_path):
    """A copy of the tiny model with one block changed and the embeddings untouched."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tuned"
    shutil.copytree(tiny_dir, out)
    hf = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        hf.model.layers[2].mlp.down_proj.weight.mul_(1.01)
    hf.save_pretrained(out)
    return out


def test_a_cache_interrupted_on_one_model_is_not_resumed_on_a_fine_tune(
    tiny, fine_tune, tmp_path, monkeypatch
):
    import harc_interp.capture.activations as activations

    tuned = load_model(str(fine_tune), progress=False)
    assert tuned.fingerprint != tiny.fingerprint
    ps = starter_prompts("harmless").sample(8, seed=0)
    config = CacheConfig(layers=(1,), batch_size=2, shard_size=4)
    real, calls = activations.residuals_for_batch, []

    def dies_in_the_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # kill -9 after the first shard
        return real(*args, **kwargs)

    monkeypatch.setattr(activations, "residuals_for_batch", dies_in_the_second_shard)
    with pytest.raises(KeyboardInterrupt):
        cache_residuals(tiny, ps, out_dir=tmp_path / "c", config=config, progress=False)
    monkeypatch.setattr(activations, "residuals_for_batch", real)
    with pytest.raises(HarcError, match="unfinished cache of a different run"):
        cache_residuals(tuned, ps, out_dir=tmp_path / "c", config=config, progress=False)
    resumed = cache_residuals(tiny, ps, out_dir=tmp_path / "c", config=config, progress=False)
    fresh = cache_residuals(tiny, ps, config=config, progress=False)
    torch.testing.assert_close(resumed.resid, fresh.resid)


def test_a_finished_cache_is_not_replaced_by_another_run(tiny, tiny_dir, tmp_path, capsys):
    out = str(tmp_path / "c")
    assert main(cache_argv(str(tiny_dir), ["starter:harmless"], out, "--limit", "6")) == 0
    assert main(cache_argv(str(tiny_dir), ["starter:harmless"], out, "--limit", "2")) == 2
    assert "holds a finished `harc cache` run of other inputs" in capsys.readouterr().err
    assert len(json.loads((tmp_path / "c" / "activations.json").read_text())["prompt_ids"]) == 6
    # The library refuses too (no CLI claim needed), and --force replaces on purpose.
    with pytest.raises(HarcError, match="finished cache of another run"):
        cache_residuals(
            tiny, starter_prompts("harmless").sample(2), out_dir=out, config=CacheConfig(layers=(1,))
        )
    assert main(cache_argv(str(tiny_dir), ["starter:harmless"], out, "--limit", "2", "--force")) == 0
    assert len(json.loads((tmp_path / "c" / "activations.json").read_text())["prompt_ids"]) == 2
    # The same command again reuses the finished cache.
    assert main(cache_argv(str(tiny_dir), ["starter:harmless"], out, "--limit", "2", "--force")) == 0


def test_directions_of_one_model_are_refused_for_its_fine_tune(tiny_directions, fine_tune):
    with pytest.raises(HarcError, match="computed on model"):
        tiny_directions.check_model(load_model(str(fine_tune), progress=False))


def test_train_names_a_prompt_with_no_room_for_the_calibrations_answers(
    tmp_path, tiny_dir, tiny_directions_dir, tiny, capsys
):
    # A harmful prompt that fits the 512-token context alone but not with the 24 tokens the margin
    # calibration answers with: named before anything is trained, not a failure mid-generation.
    from harc_interp.data.chat import formatter_for

    chat = formatter_for(tiny)
    n = next(n for n in range(1, 512) if chat.format(" ".join(["word"] * n)).n_prompt > 512 - 24)
    assert chat.format(" ".join(["word"] * n)).n_prompt <= 512  # the first such length: it still fits
    rows = [{"id": "roomless", "prompt": " ".join(["word"] * n)}]
    rows += [{"id": f"h{i}", "prompt": p} for i, p in enumerate(starter_prompts("harmful").texts[:8])]
    harmful = write(tmp_path / "h.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    argv = ["train", "--model", str(tiny_dir), "--directions", str(tiny_directions_dir), "--harmful",
            harmful, "--eval-fraction", "0.1", "--out", str(tmp_path / "o"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "less 24 for the answer, e.g. 'roomless'" in err and "Traceback" not in err, err
