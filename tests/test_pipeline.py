"""The main job on the tiny model: directions, study-set cache, summary and report, resumable."""

from __future__ import annotations

import json
import zlib

from harc_interp.coupling.loop import TrainConfig
from harc_interp.coupling.subspace import SubspaceConfig
from harc_interp.directions.stage import DirectionsConfig
from harc_interp.report.pipeline import run_main


def test_main_job_writes_summary_and_report(tiny, tmp_path):
    cfg = DirectionsConfig(
        n_train=8,
        n_val=4,
        n_test=6,
        max_new_tokens=4,
        n_response=4,
        n_bootstrap=5,
        eval_max_new_tokens=3,
        selection_slots=(1,),
        batch_size=16,
    )
    tokens = tiny.tokenizer("I As", add_special_tokens=False)["input_ids"]
    judge = lambda r: zlib.crc32(r.encode()) % 2 == 0  # noqa: E731  stand-in: a random model never refuses
    # The defaults but for a short training: the calibration still trains one map per candidate margin.
    coupling = SubspaceConfig(train=TrainConfig(steps=100, lr=1e-2, checkpoint_every=50, log_every=25))
    kwargs = dict(
        directions_config=cfg, judge=judge, refusal_tokens=tokens, coupling_config=coupling, progress=False
    )
    summary = run_main(tiny, tmp_path, **kwargs)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["directions"]["selected_layer"] == summary["directions"]["selected_layer"]
    groups = on_disk["plane"]["groups"]
    assert {"harmful", "harmless", "safe"} <= set(groups) and len(
        groups
    ) >= 3 + 8  # plain sets + attack classes
    assert all(g["n"] <= 12 for g in groups.values())
    assert on_disk["plane"]["slot"] == summary["directions"]["selected_layer"]
    page = (tmp_path / "report.html").read_text()
    assert "Causal validation" in page and "directions/figures/auroc_by_layer.html" in page
    assert "plane/figures/plane_oblique.html" in page and (tmp_path / "plane" / "coords.jsonl").is_file()
    # The fourth claim: the coupling with defaults only, evaluated base vs coupled on held-out prompts and
    # verified (confined by construction, so the verdict must say so).
    c = on_disk["coupling"]
    assert c["slots"] == [2] and c["read_slots"] == [1] and c["margin"]["2"] in (1.0, 1.5, 2.0, 2.5, 3.0)
    assert c["verify"]["confined"] and c["verify"]["checked_slots"] == [2]
    assert set(c["verify"]["by_slot"]["2"]) == {"t_inst", "t_post", "response"}
    assert c["base"]["harmless_kl"] == 0 and c["coupled"]["harmless_kl"] >= 0
    assert len(c["coupled"]["asr_by_class"]) >= 5 and c["n_eval"]["jailbreaks"] > 0
    assert "Confined coupling (defaults only)" in page and "Margin calibration" in page
    for f in ("coupling/coupling.json", "eval/base.json", "eval/responses_coupled.json", "verify.json"):
        assert (tmp_path / f).is_file(), f
    evaluated = {
        f: (tmp_path / f).stat().st_mtime_ns for f in ("eval/base.json", "eval/coupled.json", "verify.json")
    }
    again = run_main(tiny, tmp_path, **kwargs)
    assert again["directions"] == summary["directions"]
    assert json.loads(json.dumps(again["coupling"])) == on_disk["coupling"]
    # The rerun resumed: the coupling's training ended in the same weights, so no evaluation ran again.
    assert {f: (tmp_path / f).stat().st_mtime_ns for f in evaluated} == evaluated

    # No stage before the evaluation read an evaluation row: neither the directions (every split, probes'
    # test rows included) nor the coupling's training and validation rows share a goal with them.
    def goals(ids):
        return {i.split("::")[-1] for i in ids}

    base_eval = json.loads((tmp_path / "eval" / "base.json").read_text())
    evaluated_ids = base_eval["key"]["eval"]
    # The main job skips the every-layer white-box limits, which its report does not show.
    assert set(base_eval["result"]["white_box_asr"]) == {
        "v_ref_ablated_upstream",
        "v_harm_ablated_upstream",
        "attack_slot",
    }
    held_out = goals(i for ids in evaluated_ids.values() for i in ids)
    directions = json.loads((tmp_path / "directions" / "directions.json").read_text())["splits"]
    coordinates = json.loads((tmp_path / "coupling" / "work" / "coordinates.json").read_text())["ids"]
    for read in (directions, coordinates):
        seen = goals(i for ids in read.values() for i in ids)
        assert seen and not seen & held_out
    assert len(held_out) >= 24 + 24 + 12  # held-out harmful goals, harmless and borderline prompts

    # Every JSON artifact names its schema and carries its provenance.
    for path, schema in (
        ("summary.json", "main_summary"),
        ("directions/directions.json", "directions"),
        ("plane/geometry.json", "plane_geometry"),
    ):
        meta = json.loads((tmp_path / path).read_text())
        assert meta["schema"] == f"harc_interp.{schema}" and meta["schema_version"] >= 1, path
        assert meta["provenance"]["model_fingerprint"] == tiny.fingerprint, path
