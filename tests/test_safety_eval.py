"""`evaluate_safety` on the tiny model: an interrupted evaluation resumes from the groups it finished."""

from __future__ import annotations

import pytest

import harc_interp.evaluation.safety as safety
from harc_interp.data.prompts import safety_splits, starter_prompts
from harc_interp.evaluation.safety import EvalConfig, evaluate_safety

REPORTED = ("mean_asr", "asr_by_class", "plain_harmful_asr", "white_box_asr", "over_refusal",
            "over_refusal_sampled", "harmless_refusal", "harmless_refusal_sampled")  # fmt: skip


def test_an_interrupted_evaluation_resumes_from_its_finished_groups(
    tiny, tiny_directions, tmp_path, monkeypatch
):
    _, held_out = safety_splits(
        *(starter_prompts(k) for k in ("harmful", "harmless", "borderline", "attacks")), max_per_class=1
    )
    held_out = {name: ps.sample(3, seed=0) for name, ps in held_out.items()}
    config = EvalConfig(max_new_tokens=3, samples=2, white_box_limits=False)
    kwargs = dict(directions=tiny_directions, config=config, progress=False, **held_out)
    answered, real, interrupt = [], safety.respond, [3]

    def respond(model, variant, texts, ids, **kw):
        answered.append(tuple(ids))
        if len(answered) in interrupt:
            raise RuntimeError("interrupted")
        return real(model, variant, texts, ids, **kw)

    monkeypatch.setattr(safety, "respond", respond)
    with pytest.raises(RuntimeError, match="interrupted"):
        evaluate_safety(tiny, resume_dir=tmp_path, resume_key={"run": 1}, **kwargs)
    first = list(answered)
    answered.clear()
    interrupt.clear()
    resumed = evaluate_safety(tiny, resume_dir=tmp_path, resume_key={"run": 1}, **kwargs)
    # The two finished groups (jailbreaks, plain harmful) were read back; the interrupted one (the first
    # white-box attack) was answered first, then the rest: 8 groups in all (2 white-box, greedy and sampled
    # borderline and harmless).
    n_groups = 8
    assert answered[0] == first[2] and len(answered) == n_groups - 2
    assert {p.stem for p in tmp_path.glob("*.json")} >= {"jailbreaks", "harmful", "borderline_sampled"}

    monkeypatch.setattr(safety, "respond", real)
    fresh = evaluate_safety(tiny, **kwargs)  # no resume folder: the same numbers, all answered anew
    assert {k: resumed[k] for k in REPORTED} == {k: fresh[k] for k in REPORTED}

    monkeypatch.setattr(safety, "respond", respond)
    answered.clear()
    evaluate_safety(tiny, resume_dir=tmp_path, resume_key={"run": 2}, **kwargs)  # another run: nothing reused
    assert len(answered) == n_groups
