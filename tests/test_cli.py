"""The CLI on the tiny model: artifacts written, completions never printed."""

from __future__ import annotations

import json

from harc_interp import Activations
from harc_interp.cli import main


def test_cache_and_generate_verbs(tiny_dir, tmp_path, capsys):
    out = tmp_path / "acts"
    assert (
        main(
            [
                "cache",
                "--model",
                str(tiny_dir),
                "--prompts",
                "starter:harmful",
                "--limit",
                "5",
                "--out",
                str(out),
                "--layers",
                "0,4",
                "--quiet",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["resid_shape"] == [5, 2, 2, 64]
    acts = Activations.load(out)
    assert acts.layers == (0, 4) and acts.meta["labels"] == ["harmful"] * 5

    gen_dir = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "--model",
                str(tiny_dir),
                "--prompts",
                "starter:harmful",
                "--limit",
                "3",
                "--out",
                str(gen_dir),
                "--max-new-tokens",
                "5",
                "--quiet",
            ]
        )
        == 0
    )
    stdout = capsys.readouterr().out
    rows = [json.loads(line) for line in (gen_dir / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["label"] == "harmful" for r in rows)
    for r in rows:
        if r["response"].strip():
            assert r["response"] not in stdout


def test_errors_exit_2_with_a_message(tmp_path, capsys):
    assert (
        main(
            ["cache", "--model", str(tmp_path), "--prompts", "starter:harmful", "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "no config.json" in capsys.readouterr().err
    assert (
        main(
            [
                "cache",
                "--model",
                str(tmp_path),
                "--prompts",
                "starter:harmful",
                "--out",
                "o",
                "--layers",
                "a,b",
            ]
        )
        == 2
    )
