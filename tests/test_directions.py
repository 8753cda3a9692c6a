"""Directions: planted directions recovered, float64 means, artifacts refused across models."""

from __future__ import annotations

import pytest
import torch

from harc_interp import HarcError
from harc_interp.capture.activations import Activations
from harc_interp.directions import (
    Directions,
    add_response_directions,
    diff_in_means,
    directions_from_activations,
)
from harc_interp.directions.means import MeanAccumulator
from harc_interp.directions.probes import bootstrap_cosine, probe_metrics, projection_metrics
from harc_interp.directions.selection import harc_layer_scores

D = 48


def planted(n=150, layers=3, seed=0):
    """Synthetic caches: harmful prompts carry +3·u_harm at t_inst and +3·u_ref at t_post, plus noise."""
    g = torch.Generator().manual_seed(seed)
    u_harm, u_ref = torch.randn(2, D, generator=g)
    u_harm, u_ref = u_harm / u_harm.norm(), u_ref / u_ref.norm()
    resid = torch.randn(2 * n, layers, 3, D, generator=g) * 0.3 + torch.randn(D, generator=g)
    resid[:n, :, 0] += 3 * u_harm
    resid[:n, :, 1:] += 3 * u_ref
    meta = {
        "labels": ["harmful"] * n + ["harmless"] * n,
        "model": "synthetic",
        "model_fingerprint": "f" * 16,
        "template_hash": "t" * 16,
    }
    acts = Activations(
        resid, tuple(range(layers)), ("t_inst", "t_post", "post_0"), tuple(map(str, range(2 * n))), meta
    )
    mask = torch.tensor([True] * n + [False] * n)
    return acts, mask, u_harm, u_ref


def test_planted_directions_are_recovered():
    acts, mask, u_harm, u_ref = planted()
    d = directions_from_activations(acts, mask, ~mask)
    for layer in range(3):
        assert torch.dot(d.unit("v_harm", layer), u_harm) > 0.99
        assert torch.dot(d.unit("v_ref", layer), u_ref) > 0.99
        assert abs(float(d.norms["v_harm"][layer]) - 3) < 0.3
    assert d.grid.shape == (3, 2, D) and d.grid_positions == ("t_inst", "post_0")
    torch.testing.assert_close(d.grid_raw(1, "t_inst"), d.raw("v_harm", 1))


def test_float64_accumulator_equals_naive_and_any_chunking():
    x = torch.randn(1001, 7, dtype=torch.float32) * 1e3 + 1e4
    y = torch.randn(333, 7, dtype=torch.float32)
    naive = x.double().mean(0) - y.double().mean(0)
    for chunk in (1, 7, 64, 5000):
        torch.testing.assert_close(diff_in_means(x, y, chunk=chunk), naive, atol=1e-9, rtol=0)
    acc = MeanAccumulator()
    acc.add(x[:10])
    acc.add(x[10:])
    torch.testing.assert_close(acc.mean(), x.double().mean(0), atol=1e-9, rtol=0)
    with pytest.raises(HarcError, match="zero examples"):
        MeanAccumulator().mean()
    with pytest.raises(HarcError, match="not finite"):
        diff_in_means(torch.tensor([[float("nan")]]), torch.tensor([[0.0]]))


def test_response_directions_and_harc_score():
    acts, mask, u_harm, u_ref = planted()
    d = directions_from_activations(acts, mask, ~mask)
    g = torch.Generator().manual_seed(1)

    def resp(shift):
        r = torch.randn(30, 3, 1, D, generator=g) * 0.3 + shift
        return Activations(r, d.layers, ("response_mean",), tuple(map(str, range(30))), {})

    d = add_response_directions(d, resp(2 * u_harm), resp(2 * u_ref), resp(0 * u_ref))
    assert (
        torch.dot(d.unit("v_harm_resp", 0), u_harm) > 0.95
        and torch.dot(d.unit("v_ref_resp", 2), u_ref) > 0.95
    )
    scores = harc_layer_scores(d, exclude=1)
    assert scores[0] is None and scores[2] is None
    v = {k: t[1].double() for k, t in d.vectors.items()}
    c = lambda a, b: float(torch.dot(v[a], v[b]))  # noqa: E731  (unit vectors)
    expected = (
        (1 - abs(c("v_ref", "v_harm")))
        * (1 - abs(c("v_ref_resp", "v_harm_resp")))
        * abs(c("v_harm", "v_harm_resp"))
        * abs(c("v_ref", "v_ref_resp"))
    )
    assert scores[1] == pytest.approx(expected, abs=1e-5)


def test_probes_and_bootstrap():
    acts, mask, _, _ = planted(n=60)
    x = acts.resid[:, 1, 0]
    tr, te = slice(0, 40), slice(40, 60)
    pos, neg = x[:60], x[60:]
    m = projection_metrics(pos[tr], neg[tr], pos[te], neg[te])
    p = probe_metrics(pos[tr], neg[tr], pos[te], neg[te])
    assert m["auroc"] > 0.99 and p["auroc"] > 0.95 and m["accuracy"] > 0.9
    noise = torch.randn(80, D, generator=torch.Generator().manual_seed(3))
    assert 0.2 < projection_metrics(noise[:20], noise[20:40], noise[40:60], noise[60:])["auroc"] < 0.8
    r = acts.resid
    ci = bootstrap_cosine(r[mask, :, 0], r[~mask, :, 0], r[mask, :, 1], r[~mask, :, 1], n_resamples=50)
    for lo, c, hi in zip(ci["ci_low"], ci["cos"], ci["ci_high"], strict=True):
        assert lo <= c + 1e-6 and c <= hi + 1e-6 and hi - lo < 0.5


def test_artifact_round_trip_and_refusal_of_other_models(tiny, tmp_path):
    acts, mask, _, _ = planted()
    acts = Activations(
        acts.resid[..., :64] if D >= 64 else torch.nn.functional.pad(acts.resid, (0, 64 - D)),
        acts.layers,
        acts.positions,
        acts.prompt_ids,
        acts.meta | {"model_fingerprint": tiny.fingerprint},
    )
    d = directions_from_activations(acts, mask, ~mask)
    d.save(tmp_path)
    loaded = Directions.load(tmp_path, model=tiny, template_hash="t" * 16)
    torch.testing.assert_close(loaded.vectors["v_ref"], d.vectors["v_ref"])
    assert loaded.layers == d.layers and loaded.grid_positions == d.grid_positions

    other = d.with_meta(model_fingerprint="0" * 64, model="other-model")
    other.save(tmp_path / "other")
    with pytest.raises(HarcError, match="computed on model 'other-model'"):
        Directions.load(tmp_path / "other", model=tiny)
    with pytest.raises(HarcError, match="different chat template"):
        Directions.load(tmp_path, model=tiny, template_hash="x" * 16)
    path = tmp_path / "directions.safetensors"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(HarcError, match="corrupt or truncated"):
        Directions.load(tmp_path)


def test_artifact_schema_is_versioned_migrated_or_refused(tmp_path):
    import json

    acts, mask, _, _ = planted()
    d = directions_from_activations(acts, mask, ~mask)
    d.save(tmp_path)
    meta_path = tmp_path / "directions.json"
    meta = json.loads(meta_path.read_text())
    assert (meta["schema"], meta["schema_version"]) == ("harc_interp.directions", 2)
    # Schema 1 (written before schemas were recorded, no probes) still loads, without probes.
    old = {k: v for k, v in meta.items() if k not in ("schema", "schema_version", "probe_positions")}
    meta_path.write_text(json.dumps(old))
    assert Directions.load(tmp_path).probes is None
    meta_path.write_text(json.dumps(meta | {"schema_version": 3}))
    with pytest.raises(HarcError, match="newer than this harc_interp reads.*harc directions"):
        Directions.load(tmp_path)
    meta_path.write_text(json.dumps(meta | {"schema": "harc_interp.coupling"}))
    with pytest.raises(HarcError, match="is a 'harc_interp.coupling' artifact"):
        Directions.load(tmp_path)
