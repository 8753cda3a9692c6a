"""Response trajectories: teacher-forced residuals equal HF's, thresholds and flags, summary, figure, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harc_interp import CacheConfig, HarcError, cache_residuals, formatter_for, starter_prompts
from harc_interp.cli import main
from harc_interp.plane.trajectories import (
    TrajectoryConfig,
    helpful_quantile,
    midpoint_threshold,
    response_score,
    summarise,
    teacher_forced_residuals,
)
from harc_interp.report.figures import trajectory_figure


def test_teacher_forced_residuals_equal_hf_hidden_states_under_padding(tiny):
    fmt = formatter_for(tiny)
    chats = [
        fmt.format("How do I bake bread?", "Sure, here is a recipe for you"),
        fmt.format("Write a haiku about the sea and the wind over the hills at night", "I'm sorry."),
        fmt.format("Explain recursion", []),  # an empty response
    ]
    slot = 2
    forced = teacher_forced_residuals(tiny, chats, slot, batch_size=3)
    single = teacher_forced_residuals(tiny, chats[:1], slot, batch_size=1)
    assert forced.prompt.shape == (3, 2, tiny.d_model)
    assert [r.shape[0] for r in forced.response] == [len(c.response_ids) for c in chats]
    for chat, prompt, resp in zip(chats, forced.prompt, forced.response, strict=True):
        with torch.no_grad():
            hs = tiny.hf(input_ids=torch.tensor([chat.all_ids]), output_hidden_states=True).hidden_states[
                slot
            ][0]
        torch.testing.assert_close(prompt[0], hs[chat.t_inst], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(prompt[1], hs[chat.t_post], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(resp, hs[chat.n_prompt :], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(single.response[0], forced.response[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(HarcError, match="no prompts"):
        teacher_forced_residuals(tiny, [], slot)


def test_scores_thresholds_and_summary():
    p = torch.tensor([1.0, 3.0, 5.0, 100.0])
    assert response_score(p, n_tokens=3) == pytest.approx(3.0)
    assert response_score(p, n_tokens=3, reduce="max") == pytest.approx(5.0)
    assert response_score(torch.zeros(0)) is None
    groups = ["harmful", "harmful", "harmless", "harmless", "pair"]
    assert midpoint_threshold([4.0, 6.0, 0.0, 2.0, 99.0], groups) == pytest.approx(3.0)
    with pytest.raises(HarcError, match="plain 'harmful' and 'harmless'"):
        midpoint_threshold([1.0], ["pair"])
    scores = [9.0, None, 1.0, 2.0, 3.0, 10.0]
    groups = ["harmful", "harmless", "harmless", "harmless", "harmless", "harmless"]
    complied = [True, True, True, True, True, False]  # the refused harmless response is not calibration
    assert helpful_quantile(scores, groups, complied, 0.5) == pytest.approx(np.quantile([1.0, 2.0, 3.0], 0.5))
    with pytest.raises(HarcError, match="two helpful responses"):
        helpful_quantile([1.0], ["harmless"], [True], 0.9)

    def row(group, complied, pf, rf, score=1.0):
        return {
            "group": group,
            "complied": complied,
            "prompt_flagged": pf,
            "response_flagged": rf,
            "recognised_late": rf and not pf,
            "response_score": score,
            "prompt": {"harmfulness": 2.0},
        }

    rows = [
        row("pair", True, False, True),
        row("pair", True, False, False),
        row("pair", False, False, True),
        row("pair", True, True, True),
        row("harmless", True, False, False, score=None),
    ]
    s = summarise(rows)
    assert s["pair"]["n"] == 4 and s["pair"]["complied_rate"] == pytest.approx(0.75)
    assert s["pair"]["prompt_flagged_rate"] == pytest.approx(0.25)
    assert s["pair"]["late_recognition_rate"] == pytest.approx(0.5)
    assert s["pair"]["n_complied_prompt_unflagged"] == 2
    assert s["pair"]["late_recognition_among_complied_unflagged"] == pytest.approx(0.5)
    assert s["harmless"]["mean_response_score"] is None
    with pytest.raises(HarcError, match="quantile"):
        TrajectoryConfig(quantile=1.0)


def test_trajectory_figure_traces():
    rows = [
        {"group": "harmful", "tokens": {"oblique": [[1.0, 0.0], [3.0, 1.0]]}},
        {"group": "harmful", "tokens": {"oblique": [[3.0, 2.0]]}},
        {"group": "pair", "tokens": {"oblique": [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]}},
    ]
    fig = trajectory_figure(rows, threshold=1.5)
    # per panel: one faint line per prompt and one mean line per group
    assert len(fig.data) == 2 * (3 + 2)
    means = {(t.meta["group"], t.meta["axis"]): t for t in fig.data if t.meta["kind"] == "mean"}
    assert list(means["harmful", 0].y) == pytest.approx([2.0, 3.0])  # token 1: only the longer response
    assert list(means["harmful", 1].y) == pytest.approx([1.0, 1.0])
    assert list(means["pair", 0].x) == [0, 1, 2]
    assert len(trajectory_figure(rows, individual=False).data) == 4
    assert fig.layout.shapes[0].y0 == pytest.approx(1.5)


def test_trajectories_cli_end_to_end_on_tiny_model(
    tiny, tiny_dir, tiny_directions, tiny_directions_dir, tmp_path, capsys
):
    dir_path, d = tiny_directions_dir, tiny_directions
    out = tmp_path / "traj"
    argv = [
        "trajectories",
        "--model",
        str(tiny_dir),
        "--directions",
        str(dir_path),
        "--prompts",
        "starter:harmful",
        "starter:harmless",
        "starter:attacks",
        "--classes",
        "prefix_injection",
        "--per-class",
        "4",
        "--n-goals",
        "2",
        "--max-new-tokens",
        "6",
        "--n-tokens",
        "4",
        "--quantile",
        "0.5",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    assert printed["slot"] == summary["slot"] == 2 and len(rows) == 12
    assert [r["group"] for r in rows].count("prefix_injection") == 4

    # Prompt-side coordinates equal the plain residual cache projected on v_harm / v_ref.
    texts = {p.id: p.prompt for p in starter_prompts("harmful").prompts + starter_prompts("harmless").prompts}
    plain = [r for r in rows if r["id"] in texts]
    acts = cache_residuals(
        tiny, [texts[r["id"]] for r in plain], config=CacheConfig(layers=(2,)), progress=False
    )
    harm = (acts.at(2, "t_inst").double() @ d.unit("v_harm", 2).double()).numpy()
    ref = (acts.at(2, "t_post").double() @ d.unit("v_ref", 2).double()).numpy()
    np.testing.assert_allclose([r["prompt"]["harmfulness"] for r in plain], harm, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose([r["prompt"]["refusal"] for r in plain], ref, rtol=1e-4, atol=1e-4)

    # Thresholds, scores and flags follow their definitions.
    groups = np.array([r["group"] for r in rows])
    hi = np.array([r["prompt"]["harmfulness"] for r in rows])
    t_prompt = (hi[groups == "harmful"].mean() + hi[groups == "harmless"].mean()) / 2
    th = summary["thresholds"]
    assert th["prompt_harmfulness"] == pytest.approx(t_prompt)
    helpful = [r["response_score"] for r in rows if r["group"] == "harmless" and r["complied"]]
    assert th["response_score"] == pytest.approx(float(np.quantile(helpful, 0.5)))
    c = float(d.unit("v_harm_resp", 2) @ d.unit("v_ref_resp", 2))
    for r in rows:
        tokens = np.array(r["tokens"]["oblique"]).reshape(-1, 2)
        assert len(tokens) == r["n_tokens"] <= 6
        assert r["response_score"] == pytest.approx(tokens[:4, 0].mean())
        assert r["prompt_flagged"] == (r["prompt"]["harmfulness"] > th["prompt_harmfulness"])
        assert r["response_flagged"] == (r["response_score"] > th["response_score"])
        assert r["recognised_late"] == (r["response_flagged"] and not r["prompt_flagged"])
        ortho = np.array(r["tokens"]["orthonormal"]).reshape(-1, 2)
        np.testing.assert_allclose(ortho[:, 0], tokens[:, 0], atol=1e-6)  # e1 = v̂_harm_resp
        s = (1 - c**2) ** 0.5
        np.testing.assert_allclose(c * ortho[:, 0] + s * ortho[:, 1], tokens[:, 1], atol=1e-4)
    for g, stats in summary["groups"].items():
        rs = [r for r in rows if r["group"] == g]
        assert stats["late_recognition_rate"] == pytest.approx(np.mean([r["recognised_late"] for r in rs]))
        assert printed["groups"][g]["n"] == len(rs)
    assert (out / "figures" / "trajectories.html").is_file()
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert not any(x["response"].strip() and x["response"] in json.dumps(printed) for x in gens)

    # Thresholds need plain harmful and harmless prompts.
    assert main([*argv[:5], "--prompts", "starter:harmful", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "none labelled 'harmless'" in capsys.readouterr().err
