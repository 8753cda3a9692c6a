"""The confined coupling: identity at init, confined to the plane, restores the model, trains, resumes."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from harc_interp import HarcError, formatter_for, starter_prompts
from harc_interp.coupling import CouplingIntervention
from harc_interp.coupling.loop import TrainConfig, train_loop
from harc_interp.coupling.subspace import SubspaceConfig, train_subspace
from harc_interp.model import HookSite
from harc_interp.plane import plane_basis_matrix


def make(tiny_directions, slots=(2,)):
    n = len(slots)
    return CouplingIntervention.from_directions(
        tiny_directions, slots, torch.zeros(n, 2), torch.ones(n, 2) * 3
    )


def logits(model, text="How do I bake bread?"):
    ids = torch.tensor([formatter_for(model).format(text).input_ids])
    with torch.no_grad():
        return model.hf(input_ids=ids).logits


def test_coupling_basis_is_orthonormal(tiny_directions):
    u = plane_basis_matrix(tiny_directions, 2)
    torch.testing.assert_close(u.T @ u, torch.eye(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(u[:, 0], tiny_directions.unit("v_harm", 2), atol=1e-6, rtol=0)


def test_identity_at_init_and_model_restored(tiny, tiny_directions):
    coupling = make(tiny_directions, slots=(1, 2))
    before = logits(tiny)
    with coupling.apply(tiny):
        during = logits(tiny)
    torch.testing.assert_close(during, before, atol=1e-6, rtol=0)
    with torch.no_grad():  # a non-trivial map changes the output; exiting restores the model exactly
        coupling.maps[0].w_out.normal_()
        coupling.maps[0].b_out.fill_(5.0)
    with coupling.apply(tiny):
        changed = logits(tiny)
    assert (changed - before).abs().max() > 1e-3
    assert torch.equal(logits(tiny), before)


def test_edit_is_confined_to_the_plane(tiny_directions):
    coupling = make(tiny_directions)
    with torch.no_grad():
        coupling.maps[0].w_out.normal_()
        coupling.maps[0].b_out.normal_()
    h = torch.randn(3, 7, tiny_directions.vectors["v_harm"].shape[1]) * 4
    edited = coupling.edit(0, h)
    u = coupling.bases[0]
    out_plane = lambda x: x - (x @ u) @ u.T  # noqa: E731
    torch.testing.assert_close(out_plane(edited), out_plane(h), atol=1e-5, rtol=0)
    assert (edited - h).norm() > 1e-2
    w = torch.zeros(3, 7, 1)
    w[:, 4:] = 1
    partial = coupling.edit(0, h, w)
    torch.testing.assert_close(partial[:, :4], h[:, :4])  # outside the span: untouched


def test_position_maps_edit_each_span_token_with_its_own_map(tiny, tiny_directions, tmp_path):
    from harc_interp.data.chat import left_pad

    n_roles = 3
    coupling = CouplingIntervention.from_directions(
        tiny_directions, (2,), torch.zeros(1, n_roles, 2), torch.ones(1, n_roles, 2) * 3
    )
    h = torch.randn(2, 6, tiny.d_model) * 4
    torch.testing.assert_close(coupling.edit(0, h, roles=torch.arange(6).expand(2, -1)), h)  # identity
    with torch.no_grad():
        coupling.maps[0].b_out.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]))
    u = coupling.bases[0]
    roles = torch.tensor([[-1, 0, 1, 2, 3, 4]] * 2)  # before the span, t_inst, suffix, t_post, responses
    moved = (coupling.edit(0, h, (roles >= 0).float()[..., None], roles) - h) @ u / 3  # σ = 3
    torch.testing.assert_close(moved[0, 0], torch.zeros(2))  # outside the span: untouched
    for pos, role in ((1, 0), (2, 1), (3, 2), (4, 2), (5, 2)):  # response tokens use t_post's map
        torch.testing.assert_close(moved[0, pos], coupling.maps[0].b_out[role], atol=1e-5, rtol=0)
    decoding = (coupling.edit(0, h[:, :1]) - h[:, :1]) @ u / 3  # no roles: a decoding step
    torch.testing.assert_close(decoding[0, 0], coupling.maps[0].b_out[2], atol=1e-5, rtol=0)

    # In the model, the forward helpers declare the roles: a chat's t_inst gets map 0.
    chat = formatter_for(tiny).format("How do I bake bread?")
    batch = left_pad([chat], tiny.tokenizer.eos_token_id, with_response=False)
    assert (
        batch.span_role[0, chat.t_inst].item() == 0
        and batch.span_role[0, -1].item() == chat.t_post - chat.t_inst
    )
    seen = {}
    with tiny.span(batch.span_role) as span:
        ((name, hook),) = coupling.hooks(tiny)
        resid = torch.randn(1, batch.input_ids.shape[1], tiny.d_model)
        seen["roles"] = span.roles_for(resid)
        out = hook(resid, HookSite(name, 2, span))
    assert torch.equal(seen["roles"], batch.span_role)
    step = ((out - resid) @ u / 3)[0]
    torch.testing.assert_close(step[chat.t_inst], coupling.maps[0].b_out[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(step[: chat.t_inst], torch.zeros(chat.t_inst, 2), atol=1e-6, rtol=0)

    coupling.save(tmp_path)
    loaded = CouplingIntervention.load(tmp_path)
    assert loaded.maps[0].n_roles == n_roles
    torch.testing.assert_close(loaded.edit(0, h, roles=roles), coupling.edit(0, h, roles=roles))


def test_response_map_serves_response_tokens_and_decoding_steps(tiny, tiny_directions, tmp_path):
    from safetensors.torch import load_file, save_file

    n_span = 3  # t_inst, one suffix token, t_post; then the response map
    coupling = CouplingIntervention.from_directions(
        tiny_directions, (2,), torch.zeros(1, 4, 2), torch.ones(1, 4, 2), first_response_role=n_span
    )
    with torch.no_grad():
        coupling.maps[0].b_out.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [-4.0, 5.0]]))
    h = torch.randn(2, 7, tiny.d_model)
    roles = torch.tensor([[-1, 0, 1, 2, 3, 4, 5]] * 2)  # before the span, the span, then response tokens
    moved = (coupling.edit(0, h, (roles >= 0).float()[..., None], roles) - h) @ coupling.bases[0]
    for pos, m in ((1, 0), (2, 1), (3, 2), (4, 3), (5, 3), (6, 3)):
        torch.testing.assert_close(moved[0, pos], coupling.maps[0].b_out[m], atol=1e-5, rtol=0)
    decoding = (coupling.edit(0, h[:, :1]) - h[:, :1]) @ coupling.bases[0]
    torch.testing.assert_close(decoding[0, 0], coupling.maps[0].b_out[3], atol=1e-5, rtol=0)

    # An artifact saved before response maps existed is refused with what to rerun, as is one of a newer
    # schema; the current one round-trips.
    coupling.save(tmp_path)
    assert CouplingIntervention.load(tmp_path).maps[0].first_response_role == n_span
    meta = json.loads((tmp_path / "coupling.json").read_text())
    (tmp_path / "coupling.json").write_text(json.dumps(meta | {"schema_version": 99}))
    with pytest.raises(HarcError, match="newer than this harc_interp"):
        CouplingIntervention.load(tmp_path)
    (tmp_path / "coupling.json").write_text(json.dumps(meta))
    state = load_file(tmp_path / "coupling.safetensors")
    del state["maps.0.first_response_role"]
    save_file(state, tmp_path / "coupling.safetensors")
    with pytest.raises(HarcError, match="older harc_interp.*retrain"):
        CouplingIntervention.load(tmp_path)


def span_reading_coupling(model, directions):
    """A non-trivial span-reading coupling at slot 2 (t_post's map and a response map)."""
    n_span = formatter_for(model).format("x").n_prompt - formatter_for(model).format("x").t_inst
    coupling = CouplingIntervention.from_directions(
        directions,
        (2,),
        torch.zeros(1, 2, 2),
        torch.ones(1, 2, 2),
        first_response_role=n_span,
        n_span=n_span,
        first_edited_role=n_span - 1,
    )
    with torch.no_grad():
        coupling.maps[0].w_out.normal_(generator=torch.Generator().manual_seed(0))
    return coupling, n_span


def assert_generation_acts(model, coupling):
    """Through generation (prompt pass + cached decoding steps) the coupling runs, and a strong map acts."""
    from harc_interp.capture.generate import generate_chats

    prompts = formatter_for(model).format_many(["How do I bake bread?", "Name a colour"])
    plain = generate_chats(model, prompts, max_new_tokens=4, batch_size=2, progress=False)
    with torch.no_grad():
        coupling.maps[0].b_out.fill_(30.0)
    edited = generate_chats(
        model, prompts, max_new_tokens=4, batch_size=2, hooks=coupling.hooks(model), progress=False
    )
    assert [ids for ids, _ in edited] != [ids for ids, _ in plain]


def test_span_reading_map_edits_t_post_and_responses_from_the_whole_span(tiny, tiny_directions, tmp_path):
    from harc_interp.data.chat import left_pad

    coupling, n_span = span_reading_coupling(tiny, tiny_directions)
    fmt = formatter_for(tiny)
    chats = fmt.format_many(["How do I bake bread?", "Hi"], ["Mix flour", "Hello"])
    batch = left_pad(chats, tiny.tokenizer.eos_token_id, with_response=True)
    roles = batch.span_role
    h = torch.randn(2, roles.shape[1], tiny.d_model) * 4
    name, hook = coupling.hooks(tiny)[0]
    with tiny.span(roles) as span:
        out = hook(h, HookSite(name, 2, span))
        assert ("coupling_span", id(coupling), 0) in span.memory  # kept for the decoding steps
        step = hook(h[:, :1], HookSite(name, 2, span))  # a decoding step reads the stored span
    with tiny.span(roles) as next_batch:
        assert next_batch.memory == {}  # the memory lives as long as the batch
    u = coupling.bases[0]
    moved = ((out - h) @ u).norm(dim=-1)
    assert (moved[roles < n_span - 1] == 0).all()  # before t_post (and outside the span): untouched
    assert (moved[roles == n_span - 1] > 1e-3).all() and (moved[roles >= n_span] > 1e-3).all()
    torch.testing.assert_close(out - (out @ u) @ u.T, h - (h @ u) @ u.T, atol=1e-5, rtol=0)  # confined
    assert ((step - h[:, :1]) @ u).norm() > 1e-3

    # t_post's edit depends on t_inst's plane coordinates: the map reads the span.
    t_inst = (roles == 0).int().argmax(1)
    h2 = h.clone()
    h2[torch.arange(2), t_inst] += 3 * u[:, 0]
    with tiny.span(roles) as span:
        out2 = hook(h2, HookSite(name, 2, span))
    t_post = (roles == n_span - 1).int().argmax(1)
    b = torch.arange(2)
    assert ((out2 - h2)[b, t_post] - (out - h)[b, t_post]).norm() > 1e-4

    # Without the prompt pass a decoding step has no span to read: a clear error, not a silent no-op.
    with pytest.raises(HarcError, match="reads the prompt's template span"):
        hook(h[:, :1], HookSite(name, 2))

    # In generation (prompt pass + cached decoding steps) it runs, and acts.
    assert_generation_acts(tiny, coupling)

    coupling.save(tmp_path)
    loaded = CouplingIntervention.load(tmp_path)
    assert loaded.maps[0].n_context == n_span and int(loaded.maps[0].first_edited_role) == n_span - 1
    with tiny.span(roles) as span:
        site = HookSite(name, 2, span)
        torch.testing.assert_close(loaded.hooks(tiny)[0][1](h, site), coupling.hooks(tiny)[0][1](h, site))


def test_span_reading_map_is_the_identity_at_init(tiny, tiny_directions):
    coupling, n_span = span_reading_coupling(tiny, tiny_directions)
    with torch.no_grad():
        coupling.maps[0].w_out.zero_()
    ids = torch.tensor([formatter_for(tiny).format("How do I bake bread?").input_ids])
    from harc_interp.data.chat import left_pad

    batch = left_pad([formatter_for(tiny).format("How do I bake bread?")], 0, with_response=False)
    with torch.no_grad(), tiny.span(batch.span_role):
        before = tiny.hf(input_ids=ids).logits
        with coupling.apply(tiny):
            during = tiny.hf(input_ids=ids).logits
    torch.testing.assert_close(during, before, atol=1e-6, rtol=0)


def test_span_reading_position_maps_edit_every_span_token_causally(tiny, tiny_directions):
    # One map per span token plus a response map, all reading the span: a token's edit may depend on
    # the span tokens at or before it, never on later ones (their coordinates at this layer come from
    # the future of that token, which a decoding-time cache would not have either).
    n_span = 4
    coupling = CouplingIntervention.from_directions(
        tiny_directions,
        (2,),
        torch.zeros(1, n_span + 1, 2),
        torch.ones(1, n_span + 1, 2),
        first_response_role=n_span,
        n_span=n_span,
        first_edited_role=0,
    )
    with torch.no_grad():
        coupling.maps[0].w_out.normal_(generator=torch.Generator().manual_seed(0))
    u = coupling.bases[0]
    roles = torch.tensor([[-1, 0, 1, 2, 3, 4, 5]])  # before the span, the span, two response tokens
    h = torch.randn(1, 7, tiny.d_model) * 4
    span = lambda x: (x @ u)[:, 1:5][:, None].expand(-1, 7, -1, -1)  # noqa: E731

    def edit(x):
        return coupling.edit(0, x, (roles >= 0).float()[..., None], roles, span(x)) - x

    base = edit(h)
    assert ((base @ u).norm(dim=-1)[0, 1:] > 1e-4).all()  # every span and response token is edited
    for changed in range(1, 5):  # move one span token (positions 1..4 = roles 0..3) within the plane
        h2 = h.clone()
        h2[0, changed] += 2 * u[:, 0]
        moved = (edit(h2) - base).norm(dim=-1)[0]
        assert (moved[1:changed] < 1e-6).all()  # earlier tokens do not read it
        assert (moved[changed:] > 1e-5).all()  # it and every later token (responses included) do


def test_read_slots_feed_the_span_reading_map_their_own_plane_coordinates(tiny, tiny_directions, tmp_path):
    from harc_interp.data.chat import left_pad

    n_span = formatter_for(tiny).format("x").n_prompt - formatter_for(tiny).format("x").t_inst
    kwargs = dict(first_response_role=n_span, n_span=n_span, first_edited_role=n_span - 1)
    with pytest.raises(HarcError, match="upstream"):
        CouplingIntervention.from_directions(
            tiny_directions, (2,), torch.zeros(1, 2, 2), torch.ones(1, 2, 2), read_slots=(2,), **kwargs
        )
    coupling = CouplingIntervention.from_directions(
        tiny_directions, (2,), torch.zeros(1, 2, 2), torch.ones(1, 2, 2), read_slots=(1,), **kwargs
    )
    with torch.no_grad():
        coupling.maps[0].w_out.normal_(generator=torch.Generator().manual_seed(0))
    assert coupling.maps[0].n_context == 2 * n_span
    (read_name, reader), (edit_name, editor) = coupling.hooks(tiny)
    assert (read_name, edit_name) == ("blocks.1.hook_resid_pre", "blocks.2.hook_resid_pre")
    fmt = formatter_for(tiny)
    batch = left_pad(fmt.format_many(["How do I bake bread?", "Hi"]), 0, with_response=False)
    roles, b = batch.span_role, torch.arange(2)
    t_inst, t_post = (roles == 0).int().argmax(1), (roles == n_span - 1).int().argmax(1)
    h1, h2 = torch.randn(2, roles.shape[1], tiny.d_model), torch.randn(2, roles.shape[1], tiny.d_model)

    def t_post_edit(at_read_slot):
        with tiny.span(roles) as span:
            assert reader(at_read_slot, HookSite(read_name, 1, span)) is None  # it only records
            return (editor(h2, HookSite(edit_name, 2, span)) - h2)[b, t_post]

    base = t_post_edit(h1)
    assert base.norm() > 1e-4
    u_read, moved, off_plane = coupling.read_bases[0], h1.clone(), h1.clone()
    moved[b, t_inst] += 3 * u_read[:, 0]  # t_inst's harmfulness at the read slot
    w = torch.randn(tiny.d_model)
    w = w - u_read @ (u_read.T @ w)  # orthogonal to the read slot's plane
    off_plane[b, t_inst] += 3 * w / w.norm()
    assert (t_post_edit(moved) - base).norm() > 1e-4  # the read slot's plane coordinates are read
    torch.testing.assert_close(t_post_edit(off_plane), base, atol=1e-5, rtol=0)  # nothing else is
    with tiny.span(roles) as span, pytest.raises(HarcError, match="not recorded"):
        editor(h2, HookSite(edit_name, 2, span))  # the read slot's pass is missing

    coupling.save(tmp_path)
    loaded = CouplingIntervention.load(tmp_path)
    assert loaded.read_slots == (1,)
    with tiny.span(roles) as span:
        loaded.hooks(tiny)[0][1](h1, HookSite(read_name, 1, span))
        torch.testing.assert_close(
            (loaded.hooks(tiny)[1][1](h2, HookSite(edit_name, 2, span)) - h2)[b, t_post], base
        )
    assert_generation_acts(tiny, coupling)


def test_response_kl_sees_a_coupling_that_acts_on_response_tokens(tiny, tiny_directions):
    from harc_interp.evaluation import response_kl
    from harc_interp.model.edits import Variant

    fmt = formatter_for(tiny)
    chats = fmt.format_many(["How do I bake bread?", "Name a colour", "Hi"], ["Mix flour and", "Blue", ""])
    assert response_kl(tiny, chats, Variant(), Variant()) == 0.0
    coupling = make(tiny_directions)
    with torch.no_grad():
        coupling.maps[0].b_out.fill_(2.0)
    kl = response_kl(tiny, chats, Variant(), Variant(coupling.hooks(tiny)), batch_size=2)
    assert kl > 1e-4
    assert math.isnan(response_kl(tiny, chats[2:], Variant(), Variant(coupling.hooks(tiny))))  # no response


def test_coupling_artifact_round_trip_and_model_check(tiny, tiny_directions, tmp_path):
    coupling = make(tiny_directions)
    with torch.no_grad():
        coupling.maps[0].b_out.fill_(1.0)
    coupling.save(tmp_path)
    loaded = CouplingIntervention.load(tmp_path)
    h = torch.randn(2, 5, tiny.d_model)
    torch.testing.assert_close(loaded.edit(0, h), coupling.edit(0, h))
    loaded.meta["model_fingerprint"] = "someone-else"
    with pytest.raises(HarcError, match="trained on model"):
        loaded.hooks(tiny)


def test_loss_decreases_when_overfitting_one_batch(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    x = torch.randn(16, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 1.0
    loss_fn = lambda step, gen: (((net(x) - y) ** 2).mean(), {})  # noqa: E731
    rows = train_loop(net, loss_fn, TrainConfig(steps=60, lr=0.05, log_every=10), tmp_path, progress=False)
    assert rows[-1]["loss"] < 0.1 * rows[0]["loss"]


def test_resume_equals_uninterrupted(tmp_path):
    def run(out, steps, stop_at=None):
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        data = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))

        def loss_fn(step, gen):
            idx = torch.randint(64, (8,), generator=gen)
            return (net(data[idx]).sin() ** 2).mean(), {}

        stop = [lambda s, logs, m: s == stop_at] if stop_at else []
        train_loop(
            net,
            loss_fn,
            TrainConfig(steps=steps, lr=0.01, checkpoint_every=7, log_every=1),
            out,
            callbacks=stop,
            progress=False,
        )
        return torch.cat([p.detach().flatten() for p in net.parameters()])

    straight = run(tmp_path / "a", 30)
    run(tmp_path / "b", 30, stop_at=12)  # "interrupted" after step 12 (checkpoint written on stop)
    resumed = run(tmp_path / "b", 30)
    torch.testing.assert_close(resumed, straight, atol=0, rtol=0)
    lines = (tmp_path / "b" / "log.jsonl").read_text().splitlines()
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in lines] == list(range(1, 31))


def test_train_subspace_on_tiny_model(tiny, tiny_directions, tmp_path, monkeypatch):
    harmful = starter_prompts("harmful").sample(8, seed=1)
    sets = {
        "harmful": harmful,
        "harmless": starter_prompts("harmless").sample(8, seed=1),
        "borderline": starter_prompts("borderline").sample(4, seed=1),
    }
    # One-token maps f(Uᵀh) (the span-reading default has a test of its own)
    cfg = SubspaceConfig(
        span_context=False,
        margin=0.8,
        validation_fraction=0.0,
        train=TrainConfig(steps=40, lr=1e-2, log_every=10, checkpoint_every=20),
    )
    coupling = train_subspace(tiny, tiny_directions, sets, tmp_path, cfg, progress=False)
    assert coupling.slots == (2,)
    log = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(log) == 4
    loaded = CouplingIntervention.load(tmp_path)
    objective = loaded.meta["objective"]["2"]
    assert objective["trained"]["total"] < objective["at_init"]["total"]
    assert loaded.meta["mode"] == "subspace" and loaded.meta["n_examples"]["harmful"] == 8
    # The response map trained on the model's own response tokens: decoding steps are edited.
    assert loaded.maps[0].n_roles == 2 and 0 < loaded.meta["n_examples"]["harmful_response_tokens"] <= 8 * 8
    assert {"harmful_response", "harmless_response"} <= set(objective["trained"])
    h = torch.randn(2, 1, tiny.d_model)
    assert (loaded.edit(0, h) - h).norm() > 1e-4

    # A rerun reuses the cached plane coordinates (no forward passes) and the finished checkpoint.
    import harc_interp.coupling.subspace as subspace_mod

    for name in ("plane_coordinates_dataset", "response_coordinates_dataset"):
        monkeypatch.setattr(subspace_mod, name, lambda *a, **k: pytest.fail("recomputed"))
    again = train_subspace(tiny, tiny_directions, sets, tmp_path, cfg, progress=False)
    h = torch.randn(2, 3, tiny.d_model)
    torch.testing.assert_close(again.edit(0, h), coupling.edit(0, h))

    # The same folder with another objective must not hand back the finished map under the new settings.
    with pytest.raises(HarcError, match="other settings"):
        train_subspace(tiny, tiny_directions, sets, tmp_path, replace(cfg, margin=1.5), progress=False)

    monkeypatch.undo()
    # Per-position maps: one map per span token, trained and saved; HARC's two reads are always kept.
    per_position = train_subspace(
        tiny, tiny_directions, sets, tmp_path / "positions", replace(cfg, position_maps=True), progress=False
    )
    chat = formatter_for(tiny).format("Hi there")
    n_span = chat.n_prompt - chat.t_inst
    assert per_position.maps[0].n_roles == n_span + 1  # and the response map
    assert int(per_position.maps[0].first_response_role) == n_span
    meta = CouplingIntervention.load(tmp_path / "positions").meta
    constrained = meta["standardisation"]["2"]["constrained"]
    assert constrained[0][0] and constrained[-1][1]
    assert meta["objective"]["2"]["trained"]["total"] < meta["objective"]["2"]["at_init"]["total"]


def test_train_span_reading_coupling_with_held_out_rows(tiny, tiny_directions, tmp_path):
    sets = {
        "harmful": starter_prompts("harmful").sample(8, seed=1),
        "harmless": starter_prompts("harmless").sample(8, seed=1),
    }
    cfg = SubspaceConfig(
        span_context=True,
        margin=0.8,
        read_slots=(),
        validation_fraction=0.25,
        response_tokens=4,
        train=TrainConfig(steps=40, lr=1e-2, log_every=10, checkpoint_every=20),
    )
    coupling = train_subspace(tiny, tiny_directions, sets, tmp_path, cfg, progress=False)
    n_span = formatter_for(tiny).format("x").n_prompt - formatter_for(tiny).format("x").t_inst
    assert coupling.maps[0].n_context == n_span and coupling.maps[0].n_roles == 2
    meta = CouplingIntervention.load(tmp_path).meta
    objective = meta["objective"]["2"]
    assert objective["trained"]["total"] < objective["at_init"]["total"]
    # 2 of 8 rows per condition held out, the same rows for harmful and its white-box variants
    assert meta["n_examples"]["harmful"] == 6 and meta["n_examples"]["harmful_validation"] == 2
    before, after = objective["validation"]["refusal_readouts"]["harmful_ablate_ref"]["t_post"]
    assert math.isfinite(before) and math.isfinite(after)
    constrained = meta["standardisation"]["2"]["constrained"]  # only t_post is edited, so only it is read
    assert constrained[-1][1] and not any(c for row in constrained[:-1] for c in row)
    # Read slots: the maps also read the span at slot 1, cached beside slot 2's coordinates.
    read = train_subspace(tiny, tiny_directions, sets, tmp_path / "read", replace(cfg, read_slots=(1,)))
    assert read.read_slots == (1,) and read.maps[0].n_context == 2 * n_span
    from harc_interp.artifacts import load_tensors

    assert load_tensors(tmp_path / "read" / "work" / "coordinates.safetensors")["harmful"].shape[1] == 2
    objective = CouplingIntervention.load(tmp_path / "read").meta["objective"]["2"]
    assert objective["trained"]["total"] < objective["at_init"]["total"]
    with pytest.raises(HarcError, match="upstream"):
        train_subspace(tiny, tiny_directions, sets, tmp_path / "y", replace(cfg, read_slots=(2,)))
    # With position maps every span token is edited, each reading the span up to itself.
    every = train_subspace(tiny, tiny_directions, sets, tmp_path / "x", replace(cfg, position_maps=True))
    assert every.maps[0].n_roles == n_span + 1 and int(every.maps[0].first_edited_role) == 0


def test_calibration_answers_each_candidate_once_across_a_resume(
    tiny, tiny_directions, tmp_path, monkeypatch
):
    # The validation answers (generation: minutes per candidate on a real model) are kept beside each
    # candidate's checkpoint, keyed by the coupling's weights and the rows: a rerun answers nothing again.
    import harc_interp.coupling.subspace as subspace_mod

    sets = {
        "harmful": starter_prompts("harmful").sample(8, seed=1),
        "harmless": starter_prompts("harmless").sample(8, seed=1),
        "borderline": starter_prompts("borderline").sample(4, seed=1),
    }
    cfg = SubspaceConfig(
        read_slots=(),
        margin_grid=(1.0, 2.0),
        validation_fraction=0.5,
        response_tokens=2,
        calibration_tokens=2,
        train=TrainConfig(steps=10, lr=1e-2, log_every=10, checkpoint_every=10),
    )
    answered = []
    real_rates = subspace_mod.refusal_rates

    def counting_rates(*args, **kwargs):
        answered.append(1)
        return real_rates(*args, **kwargs)

    monkeypatch.setattr(subspace_mod, "refusal_rates", counting_rates)
    first = train_subspace(tiny, tiny_directions, sets, tmp_path, cfg, progress=False)
    n_first = len(answered)
    tried = [c["margin"] for c in first.meta["calibration"]["2"]["candidates"]]
    assert n_first == 1 + len(tried)  # the uncoupled model, then each candidate tried
    assert (tmp_path / "calibration" / "uncoupled.json").is_file()
    assert all((tmp_path / "calibration" / f"margin_{m:g}" / "validation.json").is_file() for m in tried)
    again = train_subspace(tiny, tiny_directions, sets, tmp_path, cfg, progress=False)
    assert len(answered) == n_first  # nothing answered twice
    assert (
        again.meta["calibration"] == first.meta["calibration"]
        and again.meta["margin"] == first.meta["margin"]
    )
    # Another answer length changes what a check measures: every check is answered anew.
    train_subspace(tiny, tiny_directions, sets, tmp_path, replace(cfg, calibration_tokens=3), progress=False)
    assert len(answered) == 2 * n_first


def _read_out_placer(d):
    """(place, to_plane) for synthetic coupling data at slot 2: place(level, shape) gives plane coordinates
    [*shape, 2] whose oblique read-outs (harm, ref) sit at `level` (+1% noise), in the objective's units
    when harmless prompts are placed at 0 and plain harmful ones at 1; to_plane maps read-outs to the plane."""
    from harc_interp.coupling import standardisation

    gen = torch.Generator().manual_seed(0)
    unit = {"harmless": torch.zeros(2, 1, 2, 2), "harmful": torch.ones(2, 1, 2, 2)}
    e, *_ = standardisation(d, 2, unit)
    to_plane = torch.linalg.inv(e)

    def place(level, shape):
        return (level + 0.01 * torch.randn(*shape, 2, generator=gen)) @ to_plane.T

    return place, to_plane


def _objective_at_init(d, coords, responses=None, bias=None, **config) -> dict:
    """The subspace objective's parts for a fresh map at slot 2 (the identity, or with `bias` the constant
    shift f(z) = z + σ · bias), on span coordinates [prompt, 1, position, 2] (and response tokens)."""
    from harc_interp.coupling import Margins, fit_slot_objective

    n_roles = 1 if responses is None else 2  # one shared span map, and the response map
    n_positions = next(iter(coords.values())).shape[2]  # response roles come after the span's
    coupling = CouplingIntervention.from_directions(
        d,
        (2,),
        torch.zeros(1, n_roles, 2),
        torch.ones(1, n_roles, 2),
        first_response_role=-1 if responses is None else n_positions,
    )
    if bias is not None:
        with torch.no_grad():
            coupling.maps[0].w_out.zero_()
            coupling.maps[0].b_out.copy_(bias)
    # The objective's terms one at a time: the plain-prompt margins and the rise cost off unless given.
    base = dict(margin=0.8, plain_margin=None, plain_response_margin=None, safe_raise_weight=0.0)
    cfg = SubspaceConfig(**(base | config))
    objective = fit_slot_objective(
        coupling.maps[0], d, 2, coords, responses, Margins.of(cfg), cfg.min_separation
    )
    return objective.summary(coords, responses or {})


def test_objective_penalises_pulling_harmful_prompts_down_even_above_the_margin(tiny_directions):
    # Plain harmful prompts sit at the harmful mean (s = 1, past the 0.8 margin): the hinge is satisfied,
    # yet a map that lowers their refusal read-out weakens refusals the model already makes (on the real
    # model the shared map pulled 112 of 128 down towards the margin). The objective must see that.
    place, _ = _read_out_placer(tiny_directions)
    coords = {"harmless": place(0.0, (16, 2))[:, None], "harmful": place(1.0, (16, 2))[:, None]}
    lowered = torch.tensor([[0.0, -0.1]])  # lowers every refusal read-out a little
    at_init = _objective_at_init(tiny_directions, coords, bias=lowered)
    assert at_init["harmful"] > 1e-3


def test_plain_margin_sets_the_plain_harmful_target_apart_from_the_attacked_ones(tiny_directions):
    # Plain harmful and jailbreak prompts both sit at the harmful mean (s = 1) and the map is the identity:
    # with margin 2 both are charged; with plain_margin 1 only the jailbreaks are.
    place, _ = _read_out_placer(tiny_directions)
    coords = {
        n: place(level, (16, 2))[:, None]
        for n, level in (("harmless", 0.0), ("harmful", 1.0), ("jailbreak", 1.0))
    }
    both = _objective_at_init(tiny_directions, coords, margin=2.0)
    apart = _objective_at_init(tiny_directions, coords, margin=2.0, plain_margin=1.0)
    assert both["harmful"] > 0.5 and both["jailbreak"] > 0.5
    assert apart["harmful"] < 0.05 and apart["jailbreak"] == pytest.approx(both["jailbreak"])


def test_plain_response_margin_sets_plain_harmful_responses_apart(tiny_directions):
    # Every response token sits at the harmless responses' refusal level (0 gaps) and the map is the
    # identity: the response margin (1) charges plain harmful and jailbreak responses alike, unless plain
    # harmful responses have a margin of their own (0: only a fall of their read-out would cost).
    place, _ = _read_out_placer(tiny_directions)
    names = ("harmless", "harmful", "jailbreak")
    coords = {n: place(float(n != "harmless"), (16, 2))[:, None] for n in names}
    responses = {n: place(0.0, (16, 3)) for n in names}
    same = _objective_at_init(tiny_directions, coords, responses)
    apart = _objective_at_init(tiny_directions, coords, responses, plain_response_margin=0.0)
    assert same["harmful_response"] == pytest.approx(1.0, abs=0.05) == same["jailbreak_response"]
    assert apart["harmful_response"] < 0.05 and apart["jailbreak_response"] == pytest.approx(1.0, abs=0.05)


def test_safe_raise_weight_charges_any_rise_of_a_safe_refusal_read_out(tiny_directions):
    # Harmless prompts at s = 0 and a map that lifts every refusal read-out by 0.2 gaps: still below the
    # safe margin (0.5), so with retention off only the rise term charges it, in proportion to its weight.
    place, to_plane = _read_out_placer(tiny_directions)
    coords = {"harmless": place(0.0, (16, 2))[:, None], "harmful": place(1.0, (16, 2))[:, None]}
    # fit_slot_objective standardises the map on every prompt's coordinates; its output is in those units.
    sigma = torch.cat([z[:, -1] for z in coords.values()]).reshape(-1, 2).std(0)
    lift = ((to_plane @ torch.tensor([0.0, 0.2])) / sigma)[None]

    def harmless_loss(**kw):
        at_init = _objective_at_init(tiny_directions, coords, bias=lift, retention_weight=0.0, **kw)
        return at_init["harmless"]

    assert harmless_loss() < 1e-6
    assert harmless_loss(safe_raise_weight=1.0) == pytest.approx(0.2, abs=1e-3)
    assert harmless_loss(safe_raise_weight=3.0) == pytest.approx(0.6, abs=3e-3)


def test_plane_separability_sees_shifted_and_identical_conditions():
    from harc_interp.coupling import plane_separability

    gen = torch.Generator().manual_seed(0)
    noise = lambda n: torch.randn(n, 1, 3, 2, generator=gen)  # noqa: E731  [prompt, slot, position, 2]
    shifted = noise(40)
    shifted[:, :, 2, 1] += 4.0  # separable at the last position only, on the refusal axis
    coords = {"harmful": shifted, "harmless": noise(30), "borderline": noise(10), "jailbreak": noise(40)}
    sep = plane_separability(coords, (7,))
    assert sep["positions"] == ["t_inst", "post_0", "t_post"]
    harmful, jailbreak = sep["slot 7"]["harmful"], sep["slot 7"]["jailbreak"]
    assert harmful[2] > 0.95 and max(harmful[:2]) < 0.75
    assert max(jailbreak) < 0.75  # drawn like the harmless prompts: nothing to couple on


def test_several_slots_train_in_order_on_coordinates_with_upstream_maps(
    tiny, tiny_directions, tmp_path, monkeypatch
):
    import harc_interp.coupling.subspace as subspace_mod

    calls = []
    real = subspace_mod.plane_coordinates_dataset

    def recording(model, d, slots, *args, **kwargs):
        coupling_hooks = kwargs["hooks"]
        # The maps upstream of this slot are trained (non-identity) by the time its coordinates are cached.
        h = torch.randn(1, 3, tiny.d_model, generator=torch.Generator().manual_seed(1))
        moved = [name for name, fn in coupling_hooks if not torch.equal(fn(h, HookSite(name, 0)), h)]
        calls.append((slots, kwargs["attack_slot"], moved))
        return real(model, d, slots, *args, **kwargs)

    monkeypatch.setattr(subspace_mod, "plane_coordinates_dataset", recording)
    sets = {
        "harmful": starter_prompts("harmful").sample(6, seed=1),
        "harmless": starter_prompts("harmless").sample(6, seed=1),
    }
    cfg = SubspaceConfig(  # one-token maps: the probe above calls the hooks outside any prompt pass
        slots=(2, 1),
        span_context=False,
        train=TrainConfig(steps=30, lr=1e-2, log_every=10, checkpoint_every=30),
    )
    coupling = train_subspace(tiny, tiny_directions, sets, tmp_path, cfg, progress=False)
    assert coupling.slots == (1, 2)
    assert calls == [((1,), 1, []), ((2,), 1, ["blocks.1.hook_resid_pre"])]
    assert set(coupling.meta["objective"]) == set(coupling.meta["margin"]) == {"1", "2"}
    assert (tmp_path / "work" / "slot2" / "coordinates.safetensors").is_file()


def _calibrate(d, coords, tmp_path, kls=None, **config):
    """Calibrate the margin of a fresh one-token map at slot 2 on synthetic span coordinates. The check
    stands in for answering the validation prompts: a safe prompt counts as refused when the map lifts its
    refusal read-out past halfway to the harmful mean (0.5), the judge's call in the objective's units;
    the safe prompts' KL is `kls[margin]` for the candidate in place (0 without `kls`)."""
    from harc_interp.coupling import train_slot

    _, to_plane = _read_out_placer(d)
    readout = torch.linalg.inv(to_plane)
    coupling = CouplingIntervention.from_directions(d, (2,), torch.zeros(1, 1, 2), torch.ones(1, 1, 2))
    safe = torch.cat([coords[n][:, 0] for n in ("harmless", "borderline") if n in coords])
    checks = []

    def check(margin, cache):
        with torch.no_grad():
            ref = (coupling.maps[0](safe)[:, -1] @ readout.T)[:, 1]
        checks.append((margin, float((ref > 0.5).float().mean())))
        return {"safe_refusal": checks[-1][1], "safe_kl": kls[margin] if kls and margin else 0.0}

    cfg = SubspaceConfig(
        span_context=False,
        response_tokens=0,
        train=TrainConfig(steps=150, lr=3e-2, log_every=150, checkpoint_every=150),
        **config,
    )
    stage = train_slot(coupling, 0, d, coords, None, cfg, tmp_path, progress=False, validate=check)
    return stage, coupling, checks


def test_calibration_takes_the_largest_margin_when_safe_prompts_can_stay_put(tiny_directions, tmp_path):
    # Jailbreaks sit well apart from the harmless and borderline prompts (refusal suppressed: -0.5 gaps),
    # so a map can lift them to any margin while the safe prompts stay where they are.
    place, _ = _read_out_placer(tiny_directions)
    levels = {"harmless": 0.0, "borderline": 0.0, "harmful": 1.0, "jailbreak": -0.5}
    coords = {n: place(level, (64, 1))[:, None] for n, level in levels.items()}
    stage, coupling, checks = _calibrate(tiny_directions, coords, tmp_path)
    cal = stage["calibration"]
    # Bisection over the seven default candidates: 3 meets the rule, then 6, then 8 (the largest).
    assert [c["margin"] for c in cal["candidates"]] == [3.0, 6.0, 8.0]
    assert cal["met"] and stage["margin"] == 8.0 and cal["grid_exhausted"]
    assert cal["uncoupled"]["safe_refusal"] == 0.0 and all(c["safe_rise"] == 0.0 for c in cal["candidates"])
    assert [m for m, _ in checks] == [None, 3.0, 6.0, 8.0]  # the uncoupled model, then each candidate
    assert not (tmp_path / "calibration" / "margin_1").exists()  # never trained
    lifted = [c["jailbreak_t_post"] for c in cal["candidates"]]  # validation read-outs after the map
    assert lifted[-1] > lifted[0] > 0.5
    # The coupling carries the picked candidate's map, trained under calibration/margin_8/.
    assert (tmp_path / "calibration" / "margin_8" / "checkpoint.pt").is_file()
    assert stage["objective"]["validation"]["refusal_readouts"]["jailbreak"]["t_post"][1] == lifted[-1]
    z = coords["jailbreak"][:4, 0]
    assert not torch.equal(coupling.maps[0](z), z)


def test_calibration_stops_at_the_first_margin_over_the_kl_budget(tiny_directions, tmp_path, caplog):
    # The same separable set, but the safe prompts' KL (given per margin) passes the 0.1 budget at 2.0:
    # the bisection keeps 1.5 after trying 1.5 and 2.0 only, and a wider grid reuses the trained candidates.
    place, _ = _read_out_placer(tiny_directions)
    levels = {"harmless": 0.0, "borderline": 0.0, "harmful": 1.0, "jailbreak": -0.5}
    coords = {n: place(level, (64, 1))[:, None] for n, level in levels.items()}
    kls = {1.0: 0.02, 1.5: 0.08, 2.0: 0.3, 3.0: 0.5, 4.0: 0.6}
    stage, _, checks = _calibrate(
        tiny_directions, coords, tmp_path, kls=kls, margin_grid=(1.0, 1.5, 2.0, 3.0)
    )
    cal = stage["calibration"]
    assert stage["margin"] == 1.5 and cal["met"] and not cal["grid_exhausted"] and len(checks) == 3
    assert [(c["margin"], c["meets_rule"], c["safe_kl"]) for c in cal["candidates"]] == [
        (1.5, True, 0.08),
        (2.0, False, 0.3),
    ]
    assert "kl" in cal["rule"].lower() and not (tmp_path / "calibration" / "margin_3").exists()
    caplog.set_level("INFO", logger="harc_interp.coupling.loop")
    again, _, _ = _calibrate(
        tiny_directions, coords, tmp_path, kls=kls, margin_grid=(1.0, 1.5, 2.0, 3.0, 4.0), kl_budget=0.05
    )  # another grid and budget: 2.0 breaks it, 1.0 meets it, 1.5 breaks it; the finished maps are reused
    tried = [c["margin"] for c in again["calibration"]["candidates"]]
    assert again["margin"] == 1.0 and tried == [2.0, 1.0, 1.5]
    assert caplog.text.count("resuming from step 150") == 2


def test_calibration_stops_at_the_first_margin_that_raises_over_refusal(tiny_directions, tmp_path, caplog):
    # Jailbreaks are drawn like the harmless prompts: lifting them lifts the harmless ones with them, and
    # with no cost on a rise (and retention light) even the weakest margin pushes safe prompts past halfway.
    place, _ = _read_out_placer(tiny_directions)
    levels = {"harmless": 0.0, "harmful": 1.0, "jailbreak": 0.0}
    coords = {n: place(level, (64, 1))[:, None] for n, level in levels.items()}
    stage, coupling, checks = _calibrate(
        tiny_directions, coords, tmp_path, safe_raise_weight=0.0, retention_weight=0.1
    )
    cal = stage["calibration"]
    assert not cal["met"] and stage["margin"] == 1.0
    assert [c["margin"] for c in cal["candidates"]] == [3.0, 1.5, 1.0]  # each failure halves the range
    assert cal["candidates"][-1]["safe_rise"] > 0.05 and not cal["candidates"][-1]["meets_rule"]
    assert "kept it" in caplog.text
    z = coords["harmless"][:4, 0]
    assert not torch.equal(coupling.maps[0](z), z)  # the failing candidate is kept (the weakest there is)


def test_pick_margin_keeps_the_last_margin_before_the_rule_breaks():
    from harc_interp.coupling.subspace import pick_margin

    rows = [{"margin": m, "meets_rule": ok} for m, ok in ((1.0, True), (1.5, True), (2.0, False))]
    assert pick_margin(rows) == (1.5, True)
    assert pick_margin(rows[:2]) == (1.5, True)
    assert pick_margin([{"margin": 1.0, "meets_rule": False}]) == (1.0, False)
    bisected = [{"margin": m, "meets_rule": ok} for m, ok in ((3.0, True), (6.0, False), (4.0, True))]
    assert pick_margin(bisected) == (4.0, True)  # the order tried does not matter
    assert pick_margin([{"margin": m, "meets_rule": False} for m in (3.0, 1.5, 1.0)]) == (1.0, False)
    # Of the margins that keep safe prompts, the one that refuses the validation jailbreaks most (the 1.5B
    # model's calibration: 0.94 at 3, 0.28 at 6 and 8); ties go to the larger margin.
    refused = {3.0: 0.94, 6.0: 0.28, 8.0: 0.28}
    rows = [{"margin": m, "meets_rule": True, "refusal": {"jailbreak": r}} for m, r in refused.items()]
    assert pick_margin(rows) == (3.0, True)
    rows[0]["refusal"]["jailbreak"] = 0.28
    assert pick_margin(rows) == (8.0, True)
    assert pick_margin([*rows, {"margin": 6.5, "meets_rule": False}]) == (6.0, True)  # below the break


def test_calibration_needs_a_validation_check(tiny_directions, tmp_path):
    from harc_interp.coupling import train_slot

    place, _ = _read_out_placer(tiny_directions)
    coords = {n: place(level, (8, 1))[:, None] for n, level in {"harmless": 0.0, "harmful": 1.0}.items()}
    coupling = CouplingIntervention.from_directions(
        tiny_directions, (2,), torch.zeros(1, 1, 2), torch.ones(1, 1, 2)
    )
    with pytest.raises(HarcError, match="validation check"):
        train_slot(coupling, 0, tiny_directions, coords, None, SubspaceConfig(), tmp_path, progress=False)


def test_a_calibrated_margin_needs_validation_rows():
    with pytest.raises(HarcError, match="validation rows"):
        SubspaceConfig(validation_fraction=0.0)
    assert SubspaceConfig(validation_fraction=0.0, margin=1.0).margin == 1.0


def test_default_slots_follow_relative_depth():
    from harc_interp.coupling.subspace import default_slots

    assert default_slots(24) == ((14,), (6, 10))  # Qwen2.5 0.5B
    assert default_slots(28) == ((17,), (7, 12))  # Qwen2.5 1.5B
    assert default_slots(4) == ((2,), (1,))  # the tiny model: the read slot equal to the slot is dropped
    cfg = SubspaceConfig()
    assert cfg.resolved(24).slots == (14,) and cfg.resolved(24).read_slots == (6, 10)
    assert replace(cfg, slots=(9,)).resolved(24).read_slots == ()  # own slots: read none unless asked
    assert replace(cfg, span_context=False).resolved(24).read_slots == ()
