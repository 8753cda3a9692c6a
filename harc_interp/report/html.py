"""The run report: one self-contained HTML page over a run directory's artifacts and figures."""

from __future__ import annotations

import html
from pathlib import Path

from ..artifacts import now
from ..directions.artifact import Directions


def _table(rows: list[list], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def _figure(run_dir: Path, path: Path, title: str) -> str:
    """The interactive figure, with links to its static copies (PNG, SVG) where they were written."""
    if not path.is_file():
        return ""
    rel = path.relative_to(run_dir).as_posix()
    static = [
        f'<a href="{p.relative_to(run_dir).as_posix()}">{p.suffix[1:].upper()}</a>'
        for p in (path.with_suffix(".png"), path.with_suffix(".svg"))
        if p.is_file()
    ]
    links = f" <small>({', '.join(static)})</small>" if static else ""
    return (
        f"<h3>{html.escape(title)}{links}</h3>"
        f'<iframe src="{rel}" width="100%" height="480" frameborder="0"></iframe>'
    )


def directions_section(run_dir: Path, d: Directions, rel: str = "directions") -> str:
    """What the directions stage found: training counts, the best harmfulness layer, the selection, the
    causal checks, and the figures."""
    m, cv, sel = d.metrics, d.causal_validation, d.selection
    relaxed = ", its filters relaxed (no candidate passed them)" if sel.arditi_filters_relaxed else ""
    best = m["best_harm_layer"]
    counts = d.counts
    parts = [
        "<h2>Directions</h2>",
        f"<p>Training prompts: {counts['refused']} refused harmful (of {counts['train_harmful']}), "
        f"{counts['answered']} answered harmless (of {counts['train_harmless']}); "
        f"{counts['harmful_completions']} harmful completions (prefill) for the response directions. "
        f"Refusal-start tokens found from the model's refusals: {html.escape(str(d.refusal_token_strings))}.</p>",
        f"<p>Best held-out harmfulness separation (projection on v_harm at t_inst): slot {best['slot']}, "
        f"AUROC {best['auroc']:.3f}, accuracy {best['accuracy']:.3f}; logistic probe: slot "
        f"{m['best_harm_layer_probe']['slot']}, AUROC {m['best_harm_layer_probe']['auroc']:.3f}. Selected layer slot "
        f"<b>{d.selected_layer}</b> by <b>{sel.method}</b>{relaxed} (requested: {sel.requested_method}); "
        f"HARC top layers {sel.harc_top_layers}.</p>",
        "<h3>Causal validation on held-out prompts (refusal rates)</h3>",
        _table(
            [["none (baseline)", cv["harmful_refusal_rate"], cv["harmless_refusal_rate"], "-"]]
            + [
                [
                    f"{n} ablated / added",
                    cv[n]["harmful_refusal_rate_ablated"],
                    cv[n]["harmless_refusal_rate_added"],
                    cv[n]["induced_on_answered"],
                ]
                for n in ("v_ref", "v_harm")
            ],
            ["intervention", "harmful prompts", "harmless prompts", "harmless answered → refused"],
        ),
        f"<p>n = {cv['n_harmful']} harmful, {cv['n_harmless']} harmless held-out prompts; "
        f"{cv['max_new_tokens']} generated tokens judged by phrase matching; intervention at slot {cv['slot']}.</p>",
    ]
    for name, title in (
        ("auroc_by_layer", "Held-out AUROC by layer"),
        ("cosine_by_layer", "cos(v_harm, v_ref)"),
        ("selection", "Direction selection"),
    ):
        parts.append(_figure(run_dir, run_dir / rel / "figures" / f"{name}.html", title))
    return "\n".join(parts)


def plane_section(run_dir: Path, geometry: dict, rel: str = "plane") -> str:
    """Per-class statistics on the oblique plane at the selected slot, and the figures."""
    rows = []
    for name, c in geometry["classes"].items():
        sep = (c.get("vs_reference") or {}).get("accuracy")
        rows.append(
            [
                name,
                c["n"],
                c["centroid"][0],
                c["centroid"][1],
                c["displacement_z"][0],
                c["displacement_z"][1],
                c["suppresses"],
                "-" if c["compliance_rate"] is None else c["compliance_rate"],
                "-" if sep is None else sep,
            ]
        )
    sep = geometry.get("separability") or {}
    parts = [
        "<h2>The harmfulness–refusal plane</h2>",
        f"<p>Slot {geometry['slot']}, oblique axes (projections on the unit v_harm at t_inst and v_ref at t_post). "
        f"Rule: {html.escape(geometry['rule'])} (k = {geometry['k']}). Cross-validated separability of all groups "
        f"from the 2-D coordinates: {_fmt(sep.get('accuracy', float('nan')))} (chance {_fmt(sep.get('chance', float('nan')))}).</p>",
        _table(
            rows,
            [
                "group",
                "n",
                "harmfulness",
                "refusal",
                "Δ harm (z)",
                "Δ refusal (z)",
                "suppresses",
                "complied",
                "separable from plain harmful (CV acc.)",
            ],
        ),
    ]
    for name, title in (
        ("plane_oblique", "Plane (oblique axes), layer slider"),
        ("class_displacement", "Displacement from plain harmful"),
    ):
        parts.append(_figure(run_dir, run_dir / rel / "figures" / f"{name}.html", title))
    return "\n".join(parts)


def coupling_section(c: dict) -> str:
    """The confined coupling with its calibrated defaults: base vs coupled on held-out prompts, the
    calibration behind the margin, and the verify verdict."""
    base, tuned = c["base"], c["coupled"]
    rows = [
        ["mean jailbreak success", base["mean_asr"], tuned["mean_asr"]],
        *[[f"  {k}", base["asr_by_class"][k], v] for k, v in tuned["asr_by_class"].items()],
        ["plain harmful success", base["plain_harmful_asr"], tuned["plain_harmful_asr"]],
        ["success, v_ref ablated upstream", base["v_ref_ablated_upstream_asr"], tuned["v_ref_ablated_upstream_asr"]],
        ["success, v_harm ablated upstream", base["v_harm_ablated_upstream_asr"], tuned["v_harm_ablated_upstream_asr"]],
        ["over-refusal (greedy)", base["over_refusal"], tuned["over_refusal"]],
        ["over-refusal (sampled)", base["over_refusal_sampled"], tuned["over_refusal_sampled"]],
        ["harmless refusal", base["harmless_refusal"], tuned["harmless_refusal"]],
        ["harmless KL at t_post", base["harmless_kl"], tuned["harmless_kl"]],
        ["harmless KL over answers", base["harmless_response_kl"], tuned["harmless_response_kl"]],
    ]  # fmt: skip
    calibration = [
        [
            slot,
            cand["margin"],
            cand["safe_refusal"],
            cand.get("safe_kl"),  # absent from couplings calibrated before the KL budget
            cand["safe_movement"],
            "picked" if cand["margin"] == c["margin"][slot] else "",
        ]
        for slot, cal in c["calibration"].items()
        for cand in cal["candidates"]
    ]
    v = c["verify"]
    where = "; ".join(
        f"slot {s}: " + ", ".join(f"{g} {x:.1e}" for g, x in groups.items())
        for s, groups in v["by_slot"].items()
    )
    n = c["n_eval"]
    return "".join(
        [
            "<h2>Confined coupling (defaults only)</h2>",
            f"<p>Coupled slot(s) {c['slots']}, reading the span at {c['read_slots'] or 'no earlier slots'} too; "
            f"margin per slot {c['margin']} (calibrated on validation rows of the training split). Held out: "
            f"{n['jailbreaks']} jailbreaks, {n['harmful']} harmful, {n['borderline']} borderline, "
            f"{n['harmless']} harmless prompts.</p>",
            _table(rows, ["held out", "base", "coupled"]),
            "<h3>Margin calibration (validation rows)</h3>",
            _table(
                calibration,
                [
                    "slot",
                    "margin",
                    "safe refusal (validation)",
                    "safe KL (validation)",
                    "safe-prompt movement",
                    "",
                ],
            ),
            f"<h3>Verify</h3><p><b>{'confined' if v['confined'] else 'NOT confined'}</b> to the plane at "
            f"slot(s) {v['checked_slots']} (tolerance {v['tolerance']:g}, relative out-of-plane change, worst "
            f"per position group: {html.escape(where)}).</p>",
        ]
    )


def write_report(run_dir: str | Path, summary: dict, sections: list[str]) -> Path:
    """Write `run_dir/report.html` from a summary and pre-rendered sections (atomic)."""
    run_dir = Path(run_dir)
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}"
    )
    head = (
        f"<h1>harc_interp report</h1><p>Model <b>{html.escape(summary['model'])}</b> "
        f"({summary['n_layers']} layers, d_model {summary['d_model']}), created {now()}.</p>"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>harc_interp report</title><style>{style}</style>"
        f"</head><body>{head}{''.join(sections)}</body></html>"
    )
    path = run_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
