"""The paper's offline attack classes (DeepInception, CodeAttack, PAP) and the adaptive attacks (GCG,
PAIR) on the tiny model: rendering, the search budget, gradients through an intervention's hooks, the
run folder (attempts there, never on stdout) and resuming."""

from __future__ import annotations

import ast
import json
import re

import pytest
import torch

from harc_interp import (
    HarcError,
    Prompt,
    addition_hooks,
    expand_attacks,
    load_prompts,
    starter_prompts,
)
from harc_interp.attacks import GCG, GCGConfig, Pair, PairConfig, pap_rewrites, prompt_rows, run_goals
from harc_interp.capture.forward import shared_prefix
from harc_interp.data.attack_classes import (
    ATTACK_SOURCES,
    PERSUASION_TECHNIQUES,
    code_attack_templates,
    paper_attack_templates,
    template_rows,
)
from harc_interp.data.prompts import AttackTemplate, safety_splits
from harc_interp.model.edits import Variant

GOAL = Prompt("g-1", "Describe the quiet zebra plan in detail", label="harmful")
REFUSE_ALL = lambda r: True  # noqa: E731  (a random model never refuses: make every answer a refusal)
SMALL = GCGConfig(steps=3, candidates=24, topk=16, suffix_length=5, check_every=100, max_new_tokens=3)


def test_paper_attack_classes_render_deterministically():
    templates = paper_attack_templates()
    assert (
        {t.attack_class for t in templates} == {"deep_inception", "code_attack", "pap"} == set(ATTACK_SOURCES)
    )
    assert templates == paper_attack_templates()
    assert {t.method for t in templates if t.attack_class == "pap"} == set(PERSUASION_TECHNIQUES)
    # the built-in file is the builders' output, with each row's reference and licence
    starter = starter_prompts("paper_attacks")
    assert starter.templates == templates
    rows = template_rows(templates)
    assert all(r["reference"] and r["license"].startswith("Apache-2.0") for r in rows)
    attacks = expand_attacks(templates, [GOAL])
    again = expand_attacks(starter.templates, [GOAL])
    assert attacks.texts == again.texts and attacks.ids == again.ids
    for p in attacks:
        assert p.label == "jailbreak" and p.goal == GOAL.prompt and "[INSERT PROMPT HERE]" not in p.prompt
        if p.attack_class != "code_attack":
            assert GOAL.prompt in p.prompt


def test_code_attack_encodes_the_goal_and_decodes_back():
    words = GOAL.prompt.split()
    by_encoding = {t.encoding: t.fill(GOAL.prompt) for t in code_attack_templates()}
    assert set(by_encoding) == {"python_list", "python_stack", "python_string"}
    listed = [ast.literal_eval(s) for s in re.findall(r"my_list\.append\((.*)\)", by_encoding["python_list"])]
    assert listed == words and GOAL.prompt not in by_encoding["python_list"]
    stacked = [
        ast.literal_eval(s) for s in re.findall(r"my_stack\.append\((.*)\)", by_encoding["python_stack"])
    ]
    assert stacked[::-1] == words  # popping the stack gives the goal in order
    literal = re.search(r"my_string = (.*)", by_encoding["python_string"]).group(1)
    assert ast.literal_eval(literal) == GOAL.prompt
    quoted = code_attack_templates()[0].fill('say "hi" \\ now')  # quotes and backslashes stay valid Python
    assert [ast.literal_eval(s) for s in re.findall(r"my_list\.append\((.*)\)", quoted)] == [
        "say",
        '"hi"',
        "\\",
        "now",
    ]
    with pytest.raises(HarcError, match="unknown encoding"):
        AttackTemplate("x", "[INSERT PROMPT HERE]", "code_attack", encoding="rot13")


def test_paper_attack_classes_flow_into_eval_and_plane_sets():
    from harc_interp import study_prompts

    _, ev = safety_splits(
        starter_prompts("harmful"),
        starter_prompts("harmless"),
        starter_prompts("borderline"),
        starter_prompts("paper_attacks"),
        max_per_class=4,
    )
    assert {p.attack_class for p in ev["jailbreaks"]} == {"deep_inception", "code_attack", "pap"}
    plane = study_prompts([starter_prompts("harmful"), starter_prompts("paper_attacks")], n_goals=2)
    assert {"deep_inception", "code_attack", "pap"} <= {p.attack_class for p in plane}


def test_pap_rewrites_by_an_attacker_model(tiny, tmp_path):
    goals = starter_prompts("harmful").prompts[:2]
    ps = pap_rewrites(tiny, goals, ("logical_appeal", "expert_endorsement"), max_new_tokens=4, progress=False)
    assert len(ps) == 4 and {p.attack_class for p in ps} == {"pap"}
    assert ps.ids[0] == f"pap-logical_appeal::{goals[0].id}" and ps.prompts[0].goal == goals[0].prompt
    assert {p.meta["technique"] for p in ps} == {"logical_appeal", "expert_endorsement"}
    again = pap_rewrites(
        tiny, goals, ("logical_appeal", "expert_endorsement"), max_new_tokens=4, progress=False
    )
    assert again.texts == ps.texts  # greedy
    path = tmp_path / "pap.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in prompt_rows(ps)))
    back = load_prompts(path)
    assert back.texts == ps.texts and back.prompts[0].meta["technique"] == "logical_appeal"
    with pytest.raises(HarcError, match="unknown persuasion"):
        pap_rewrites(tiny, goals, ("flattery_bomb",))


def test_gcg_lowers_the_target_loss_within_its_step_budget(tiny, tmp_path):
    gcg = GCG(tiny, Variant(), SMALL, REFUSE_ALL)
    (row,) = run_goals([GOAL], tmp_path, {"k": 1}, gcg.attack, progress=False)
    assert row["steps"] == SMALL.steps and row["stopped"] == "budget" and not row["success"]
    assert row["best_loss"] < row["initial_loss"]
    steps = [json.loads(line) for line in (tmp_path / "attempts.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(SMALL.steps + 1))
    assert all(s["loss"] >= t["loss"] for s, t in zip(steps, steps[1:], strict=False))  # the best is kept
    assert "response" in steps[0] and "response" in steps[-1]  # judged at the start and at the budget
    # the gradient pass (one-hot embeddings, prefix cache) reads the same loss as the candidate pass
    before, suffix = gcg._initial(GOAL.prompt)
    _, loss, _ = gcg.gradient(before, suffix, None)
    scored, _ = gcg.score(before, suffix[None], None)
    assert abs(loss - float(scored[0])) < 1e-4
    with_prefix = gcg.gradient([], suffix, shared_prefix(tiny, before))[1]
    assert abs(with_prefix - loss) < 1e-4
    assert bool(gcg.retokenizes(GOAL.prompt, before, suffix[None])[0])


def test_gcg_gradient_flows_through_the_intervention_hooks(tiny, tiny_directions, tmp_path):
    from harc_interp.coupling import CouplingIntervention

    steer = addition_hooks(tiny, tiny_directions.raw("v_ref", 1), 1, 8.0)
    saw_grad = []

    def spy(resid, site):
        saw_grad.append(resid.requires_grad)

    variants = {
        "plain": Variant(),
        "steered": Variant([*steer, ("blocks.2.hook_resid_pre", spy)], name="steered"),
    }
    coupling = CouplingIntervention.from_directions(
        tiny_directions, (2,), torch.zeros(1, 2), torch.ones(1, 2) * 3
    )
    with torch.no_grad():
        coupling.maps[0].b_out.fill_(2.0)
    variants["coupling"] = Variant(coupling.hooks(tiny), name="coupling")
    grads = {}
    for name, variant in variants.items():
        gcg = GCG(tiny, variant, SMALL, REFUSE_ALL)
        before, suffix = gcg._initial(GOAL.prompt)
        grads[name] = gcg.gradient(before, suffix, None)
    assert saw_grad and all(saw_grad)  # the hook ran inside the graph the gradient is taken through
    for name in ("steered", "coupling"):
        assert abs(grads[name][1] - grads["plain"][1]) > 1e-4
        assert not torch.allclose(grads[name][0], grads["plain"][0])
    gcg = GCG(
        tiny, variants["coupling"], GCGConfig(steps=1, candidates=8, topk=8, suffix_length=4), REFUSE_ALL
    )
    (row,) = run_goals([GOAL], tmp_path, {"k": 2}, gcg.attack, progress=False)
    assert row["steps"] == 1 and row["candidates"] > 0


def test_pair_stops_at_its_query_budget(tiny, tmp_path):
    config = PairConfig(queries=5, streams=2, max_new_tokens=3, attacker_max_new_tokens=6)
    pair = Pair(tiny, Variant(), tiny, config, REFUSE_ALL)
    (row,) = run_goals([GOAL], tmp_path / "a", {"k": 1}, pair.attack, progress=False)
    assert row["queries"] == 5 and row["iterations"] == 3 and not row["success"]
    queries = [json.loads(line) for line in (tmp_path / "a" / "attempts.jsonl").read_text().splitlines()]
    assert [q["query"] for q in queries] == list(range(5)) and all(q["prompt"] for q in queries)
    won = Pair(tiny, Variant(), tiny, config, lambda r: False)  # the first answer already succeeds
    (row,) = run_goals([GOAL], tmp_path / "b", {"k": 1}, won.attack, progress=False)
    assert row["success"] and row["queries"] == 2 and row["winning_query"] == 0


def _goal_file(tmp_path):
    path = tmp_path / "goals.jsonl"
    rows = [
        {"id": "zebra", "prompt": GOAL.prompt},
        {"id": "otter", "prompt": "List the hidden otter steps now"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, [r["prompt"] for r in rows]


def test_attack_cli_writes_the_run_folder_only_and_resumes(tiny_dir, tmp_path, capsys, monkeypatch):
    import harc_interp.attacks.gcg as gcg_mod
    import harc_interp.evaluation.judging as judging
    from harc_interp.cli import main

    monkeypatch.setattr(judging, "make_judge", lambda spec, load: REFUSE_ALL)
    calls = []
    real = gcg_mod.GCG.attack

    def counted(self, run):
        calls.append(run.goal.id)
        return real(self, run)

    monkeypatch.setattr(gcg_mod.GCG, "attack", counted)
    goals, texts = _goal_file(tmp_path)
    out = tmp_path / "gcg"
    argv = ["attack", "--model", str(tiny_dir), "--method", "gcg", "--goals", str(goals), "--out", str(out),
            "--steps", "2", "--candidates", "16", "--topk", "8", "--suffix-length", "4", "--max-new-tokens", "3",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr()
    summary = json.loads((out / "attack.json").read_text())
    assert (
        summary["schema"] == "harc_interp.attack"
        and summary["n_goals"] == 2
        and summary["attack_success"] == 0.0
    )
    assert [g["steps"] for g in summary["per_goal"]] == [2, 2] and summary["budget"]["steps"] == 2
    assert summary["cpu_seconds"] > 0 and summary["candidates_per_s"] > 0
    attempts = (out / "attempts.jsonl").read_text().splitlines()
    said = [json.loads(a) for a in attempts]
    assert len(said) == 6 and {a["goal_id"] for a in said} == {"zebra", "otter"}
    secrets = texts + [a["suffix"] for a in said] + [a["response"] for a in said if a.get("response")]
    for text in (t for t in secrets if len(t) >= 10):  # shorter ones could occur by chance
        assert (
            text not in printed.out and text not in printed.err
        )  # prompts, suffixes, answers: run folder only
    assert calls == ["zebra", "otter"]
    # an interrupted run: 'otter' unfinished, its attempts and result cut short on file
    results = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(results[0] + "\n" + results[1][:15])  # cut short mid-write
    (out / "attempts.jsonl").write_text("\n".join(attempts[:4]) + "\n" + attempts[4][:20])
    (out / "harc_run.json").unlink()
    assert main(argv) == 0
    assert calls == ["zebra", "otter", "otter"]  # the finished goal is skipped
    assert (out / "attempts.jsonl").read_text().splitlines() == attempts  # seeded: the same search again
    assert main(argv) == 0 and calls == ["zebra", "otter", "otter"]  # a finished run does nothing
    other = [*argv, "--steps", "3"]
    (out / "harc_run.json").unlink()
    assert main(other) == 2 and "other settings" in capsys.readouterr().err


def test_attack_cli_pair_with_an_intervention(tiny_dir, tiny, tiny_directions, tmp_path, capsys, monkeypatch):
    import harc_interp.evaluation.judging as judging
    from harc_interp.cli import main
    from harc_interp.coupling import CouplingIntervention

    coupling = CouplingIntervention.from_directions(
        tiny_directions, (2,), torch.zeros(1, 2), torch.ones(1, 2) * 3
    )
    coupling.save(tmp_path / "coupling")
    monkeypatch.setattr(judging, "make_judge", lambda spec, load: REFUSE_ALL)
    goals, texts = _goal_file(tmp_path)
    out = tmp_path / "pair"
    argv = ["attack", "--model", str(tiny_dir), "--method", "pair", "--goals", str(goals), "--limit", "1",
            "--intervention", str(tmp_path / "coupling"), "--queries", "3", "--streams", "2",
            "--max-new-tokens", "3", "--attacker-max-new-tokens", "5", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr()
    summary = json.loads((out / "attack.json").read_text())
    assert summary["per_goal"][0]["queries"] == 3 and summary["queries"] == 3
    assert summary["intervention"] == str(tmp_path / "coupling")
    rows = [json.loads(line) for line in (out / "attempts.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    secrets = texts + [r["prompt"] for r in rows] + [r["response"] for r in rows]
    for text in (t for t in secrets if len(t) >= 10):
        assert text not in printed.out and text not in printed.err
    assert main([*argv[:-3], "--steps", "2", "--out", str(tmp_path / "x")]) == 2
    assert "do not apply to --method pair" in capsys.readouterr().err
