"""Confinement verification: passes for the confined coupling, fails for a leaking intervention."""

from __future__ import annotations

import torch

from harc_interp import formatter_for, starter_prompts
from harc_interp.coupling import CouplingIntervention
from harc_interp.evaluation.verify import confinement_report, random_plane_fractions
from harc_interp.model.edits import Variant


def trained_like(tiny_directions):
    c = CouplingIntervention.from_directions(tiny_directions, (2,), torch.zeros(1, 2), torch.ones(1, 2) * 3)
    with torch.no_grad():
        c.maps[0].w_out.normal_(generator=torch.Generator().manual_seed(0))
        c.maps[0].b_out.fill_(2.0)
    return c


def test_random_plane_null_is_about_two_over_d():
    delta = torch.randn(400, 64, generator=torch.Generator().manual_seed(0))
    assert abs(float(random_plane_fractions(delta, 300, 0).mean()) - 2 / 64) < 0.01


def test_confined_coupling_passes_and_leak_is_caught(tiny, tiny_directions):
    prompts = {
        "harmful": starter_prompts("harmful").sample(4, seed=2),
        "harmless": starter_prompts("harmless").sample(4, seed=2),
    }
    coupling = trained_like(tiny_directions)
    ok = confinement_report(
        tiny,
        tiny_directions,
        prompts,
        tuned=Variant(coupling.hooks(tiny)),
        intervened_slots=(2,),
        n_null=50,
        progress=False,
    )
    assert ok["confined_at_intervened"] and ok["max_rel_out_of_plane_at_intervened"] < 1e-6
    at2 = [r for r in ok["sets"]["harmful"] if r["slot"] == 2]
    assert all(r["rel_change"] > 1e-3 and r["in_plane_energy_fraction"] > 0.999 for r in at2)
    before = [r for r in ok["sets"]["harmful"] if r["slot"] < 2]
    assert all(r["rel_change"] == 0 for r in before)  # nothing upstream moves
    assert ok["harmless_kl"] > 0

    leak = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(5)) * 0.5
    leaky = [*coupling.hooks(tiny), ("blocks.2.hook_resid_pre", lambda r, s: r + leak)]
    bad = confinement_report(
        tiny, tiny_directions, prompts, tuned=Variant(leaky), intervened_slots=(2,), n_null=50, progress=False
    )
    assert not bad["confined_at_intervened"] and bad["max_rel_out_of_plane_at_intervened"] > 1e-3

    # Summaries say where each change lives: the coupling's in the plane from slot 2 on, the leak's not.
    good, leaked = ok["summary"]["harmful"], bad["summary"]["harmful"]
    assert good["first_changed_slot"] == leaked["first_changed_slot"] == 2
    assert good["mean_in_plane_energy_fraction"] > leaked["mean_in_plane_energy_fraction"]
    assert leaked["max_rel_out_of_plane"] > 1e-3

    # With no designated slots (a LoRA adapter) the verdict is read where the change first enters.
    none = confinement_report(tiny, tiny_directions, prompts, tuned=Variant(leaky), n_null=10, progress=False)
    assert none["confined_at_intervened"] is None and none["max_rel_out_of_plane_at_intervened"] is None
    assert none["verdict"]["checked_slots"] == [2] and not none["verdict"]["confined"]
    assert none["summary"]["harmless"]["max_rel_change"] > 0


def test_verify_reads_response_tokens_and_catches_a_leak_there(tiny, tiny_directions):
    # A coupling that also edits response tokens (its response map) stays confined there; a hook that
    # leaks out of the plane only at response tokens (prompt positions untouched) is caught.
    prompts = {"harmless": starter_prompts("harmless").sample(4, seed=3)}
    probe = formatter_for(tiny).format("x")
    n_span = probe.n_prompt - probe.t_inst  # span roles t_inst … t_post; responses come after
    coupling = CouplingIntervention.from_directions(
        tiny_directions, (2,), torch.zeros(1, 2, 2), torch.ones(1, 2, 2) * 3, first_response_role=n_span
    )
    with torch.no_grad():
        coupling.maps[0].b_out.fill_(2.0)
    run = lambda hooks: confinement_report(  # noqa: E731
        tiny, tiny_directions, prompts, tuned=Variant(hooks), intervened_slots=(2,), n_null=10,
        response_tokens=4, progress=False,
    )  # fmt: skip
    ok = run(coupling.hooks(tiny))
    assert ok["verdict"]["confined"] and set(ok["verdict"]["by_slot"]["2"]) == {
        "t_inst",
        "t_post",
        "response",
    }
    response_at_2 = next(r for r in ok["sets"]["harmless"] if r["slot"] == 2 and r["position"] == "response")
    assert response_at_2["rel_change"] > 1e-3 and response_at_2["in_plane_energy_fraction"] > 0.999

    leak = torch.randn(tiny.d_model, generator=torch.Generator().manual_seed(6))

    def leak_at_responses(resid, site):
        roles = site.span_roles(resid)
        if roles is None:  # a decoding step: a response token
            return resid + leak
        return resid + leak * (roles >= n_span)[..., None]

    bad = run([*coupling.hooks(tiny), ("blocks.2.hook_resid_pre", leak_at_responses)])
    by_group = bad["verdict"]["by_slot"]["2"]
    assert by_group["t_inst"] < 1e-6 and by_group["t_post"] < 1e-6  # the prompt side looks confined
    assert by_group["response"] > 1e-3 and not bad["verdict"]["confined"]
