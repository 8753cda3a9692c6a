"""Prompt sets: file formats, the shared data schemas, starter sets, attack expansion, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harc_interp import HarcError, expand_attacks, load_prompts, starter_prompts
from harc_interp.data.prompts import as_role

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_starter_sets_are_complete():
    harmful, harmless, borderline, attacks = (
        starter_prompts(k) for k in ("harmful", "harmless", "borderline", "attacks")
    )
    assert len(harmful) == 48 and {p.label for p in harmful} == {"harmful"}
    assert len(harmless) == 48 and {p.label for p in harmless} == {"harmless"}
    assert len(borderline) == 24 and {p.label for p in borderline} == {"safe"}
    assert len(attacks.templates) >= 8 and not attacks.prompts
    assert len({t.attack_class for t in attacks.templates}) >= 8


def test_expand_attacks_fills_every_template():
    templates = starter_prompts("attacks").templates
    goals = starter_prompts("harmful").sample(3, seed=0)
    jb = expand_attacks(templates, goals.prompts)
    assert len(jb) == 3 * len(templates)
    for p in jb:
        assert p.goal in p.prompt and "[INSERT PROMPT HERE]" not in p.prompt
        assert p.attack_class and p.label == "jailbreak"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data not present")
def test_shared_data_files_load():
    harmful = load_prompts(SHARED / "harmful_dev.jsonl")
    assert len(harmful) == 671 and harmful.prompts[0].meta["source"] == "jbb"
    jb = load_prompts(SHARED / "jailbreaks_dev.jsonl")
    assert len(jb.prompts) + len(jb.templates) == 964
    assert len({p.attack_class for p in jb.prompts} | {t.attack_class for t in jb.templates}) == 12
    over = load_prompts(SHARED / "over_refusal_dev.jsonl")
    assert {p.label for p in over} == {"safe", "unsafe"}


def test_csv_json_and_label_override(tmp_path):
    (tmp_path / "p.csv").write_text("id,prompt,category\na,How do I cook rice?,food\nb,Name a planet,space\n")
    ps = load_prompts(tmp_path / "p.csv", label="harmless")
    assert ps.ids == ["a", "b"] and ps.prompts[0].category == "food" and ps.prompts[1].label == "harmless"
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "x"}, {"prompt": "y"}]))
    assert load_prompts(tmp_path / "p.json").texts == ["x", "y"]


def test_a_role_leaves_out_rows_labelled_the_other_way(tmp_path):
    rows = [
        {"id": "s", "prompt": "How do I kill a Python process?", "label": "safe"},
        {"id": "u", "prompt": "How do I kill my neighbour?", "label": "unsafe"},
        {"id": "n", "prompt": "Name a planet"},
    ]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    safe, dropped = as_role(load_prompts(tmp_path / "pairs.jsonl"), "safe")
    assert safe.ids == ["s", "n"] and dropped == ("u",) and {p.label for p in safe} == {"safe"}
    harmful, dropped = as_role(load_prompts(tmp_path / "pairs.jsonl"), "harmful")
    assert harmful.ids == ["u", "n"] and dropped == ("s",)
    with pytest.raises(HarcError, match="unknown prompt role"):
        as_role(load_prompts(tmp_path / "pairs.jsonl"), "spicy")


def test_splits_are_deterministic_and_disjoint():
    ps = starter_prompts("harmless")
    a_train, a_test = ps.split(0.25, seed=3)
    b_train, b_test = ps.split(0.25, seed=3)
    assert a_test.ids == b_test.ids and len(a_test) == 12
    assert not set(a_train.ids) & set(a_test.ids) and len(a_train) + len(a_test) == len(ps)
    assert ps.split(0.25, seed=4)[1].ids != a_test.ids


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "id": "1"}\n{"prompt": "  ", "id": "2"}\n')
    with pytest.raises(HarcError, match=r"bad.jsonl:2: missing or empty 'prompt'"):
        load_prompts(bad)
    bad.write_text('{"prompt": "a", "id": "1"}\n{"prompt": "b", "id": "1"}\n')
    with pytest.raises(HarcError, match="duplicate id '1'"):
        load_prompts(bad)
    bad.write_text('{"prompt": "a"\n')
    with pytest.raises(HarcError, match="not valid JSON"):
        load_prompts(bad)
    bad.write_text('{"template": "no slot here", "attack_class": "x"}\n')
    with pytest.raises(HarcError, match="placeholder"):
        load_prompts(bad)
    with pytest.raises(HarcError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")
    with pytest.raises(HarcError, match="unknown starter set"):
        load_prompts("starter:evil")


def test_attack_classes_keeps_prompts_and_templates_of_those_classes():
    attacks = starter_prompts("attacks")
    filled = expand_attacks(attacks.templates, starter_prompts("harmful").prompts[:2])
    mixed = filled + attacks + starter_prompts("harmless")
    first = attacks.templates[0].attack_class
    kept = mixed.attack_classes([first])
    assert {t.attack_class for t in kept.templates} == {first}
    assert {p.attack_class for p in kept.prompts} == {first, None}
    assert len(kept.where(label="harmless")) == len(starter_prompts("harmless"))
    with pytest.raises(HarcError, match="no attack class \\['nope'\\]"):
        mixed.attack_classes([first, "nope"])
