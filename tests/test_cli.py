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


def test_directions_verb(tiny_dir, tmp_path, capsys, monkeypatch):
    import functools

    from harc_interp.directions import Directions
    from harc_interp.directions import stage as extract

    # The phrase judge finds no refusals in a random model's output: judge by length instead.
    monkeypatch.setattr(
        extract,
        "extract_directions",
        functools.partial(extract.extract_directions, judge=lambda response: len(response) % 2 == 0),
    )

    def args(out, refusal_tokens):
        return [
            *("directions", "--model", str(tiny_dir), "--harmful", "starter:harmful"),
            *("--harmless", "starter:harmless", "--out", str(out), "--n-train", "10", "--n-val", "4"),
            *("--n-test", "6", "--max-new-tokens", "6", "--n-response", "4", "--n-bootstrap", "10"),
            *("--eval-max-new-tokens", "4", "--selection-slots", "1,2", "--quiet"),
            *("--refusal-tokens", refusal_tokens),
        ]

    out = tmp_path / "dirs"
    assert main(args(out, "I,S")) == 0
    printed = json.loads(capsys.readouterr().out)
    d = Directions.load(out)
    assert printed["selected_layer"] == d.selected_layer
    assert d.meta["config"]["n_train"] == 10
    assert d.refusal_token_strings == ["I", "S"]
    assert [c["slot"] for c in d.selection.arditi["candidates"]] == [1, 2]
    assert (out / "figures" / "auroc_by_layer.html").is_file()

    # The saved probes score prompts from the command line: one row per prompt, every probe slot.
    score = ["score", "--model", str(tiny_dir), "--directions", str(out), "--prompts", "starter:harmful"]
    assert main([*score, "starter:harmless", "--limit", "12", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = [json.loads(x) for x in (tmp_path / "s" / "scores.jsonl").read_text().splitlines()]
    assert printed["n"] == len(rows) == 12 and set(rows[0]["probe"]) == {str(s) for s in d.layers}
    assert all(0 <= p <= 1 for r in rows for p in r["probe"].values())
    summary = json.loads((tmp_path / "s" / "scores.json").read_text())
    assert len(summary["auroc"]["probe"]) == len(d.layers) and printed["best_probe_slot"]["slot"] in d.layers

    assert main(args(tmp_path / "other", "I,Sorry about")) == 2
    assert "refusal token 'Sorry about'" in capsys.readouterr().err
