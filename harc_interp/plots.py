"""Plotly figure builders: each returns a `go.Figure`; writing files is `write_figure`'s job."""

from __future__ import annotations

import logging
from pathlib import Path

import plotly.graph_objects as go

log = logging.getLogger(__name__)


def write_figure(fig: go.Figure, path_stem: str | Path, png: bool = True) -> list[Path]:
    """Write `stem.html` (plotly.js stored once beside it, so it opens offline) and `stem.png` when a
    static renderer (kaleido) is available."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    html = stem.with_suffix(".html")
    fig.write_html(html, include_plotlyjs="directory")
    written = [html]
    if png:
        try:
            fig.write_image(stem.with_suffix(".png"))
            written.append(stem.with_suffix(".png"))
        except Exception as e:  # no kaleido/Chrome: HTML is the figure of record
            log.info("PNG not written for %s (%s)", stem.name, e.__class__.__name__)
    return written


def metric_curves_figure(
    metrics: dict, title: str = "Held-out separability of harmful vs harmless"
) -> go.Figure:
    """AUROC per layer slot: projection on the direction and a logistic probe, at t_inst and t_post."""
    fig = go.Figure()
    layers = metrics["layers"]
    for pos in metrics["probes"]:
        for kind, dash in (("projection", "solid"), ("probe", "dot")):
            fig.add_trace(
                go.Scatter(
                    x=layers,
                    y=[m["auroc"] for m in metrics["probes"][pos][kind]],
                    name=f"{pos} · {kind}",
                    mode="lines+markers",
                    line={"dash": dash},
                )
            )
    fig.update_layout(
        title=title,
        xaxis_title="layer slot (block input; last = final output)",
        yaxis_title="held-out AUROC",
        yaxis_range=[0.4, 1.02],
        template="plotly_white",
    )
    return fig


def cosine_figure(metrics: dict, title: str = "cos(v_harm, v_ref) per layer, bootstrap 95% CI") -> go.Figure:
    layers = metrics["layers"]
    c = metrics["cos_harm_ref"]
    fig = go.Figure(
        [
            go.Scatter(
                x=layers + layers[::-1],
                y=c["ci_high"] + c["ci_low"][::-1],
                fill="toself",
                name="95% CI",
                line={"width": 0},
                fillcolor="rgba(99,110,250,0.2)",
                hoverinfo="skip",
            ),
            go.Scatter(
                x=layers,
                y=c["cos"],
                name="cos(v_harm, v_ref)",
                mode="lines+markers",
                line={"color": "#636efa"},
            ),
        ]
    )
    for name, ys in metrics.get("other_cosines", {}).items():
        fig.add_trace(go.Scatter(x=layers, y=ys, name=name, mode="lines", line={"dash": "dash"}))
    fig.update_layout(title=title, xaxis_title="layer slot", yaxis_title="cosine", template="plotly_white")
    return fig


def selection_figure(candidates: list[dict], harc_scores: list | None, layers: list[int]) -> go.Figure:
    """Bypass and induce scores of the refusal-direction candidates, and the HARC layer score."""
    fig = go.Figure()
    for pos in sorted({c["position"] for c in candidates}):
        rows = [c for c in candidates if c["position"] == pos]
        fig.add_trace(
            go.Scatter(
                x=[c["slot"] for c in rows],
                y=[c["bypass_score"] for c in rows],
                name=f"bypass score ({pos})",
                mode="lines+markers",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=[c["slot"] for c in rows],
                y=[c["induce_score"] for c in rows],
                name=f"induce score ({pos})",
                mode="lines+markers",
                line={"dash": "dot"},
            )
        )
    if harc_scores is not None:
        fig.add_trace(
            go.Bar(
                x=layers,
                y=[s if s is not None else 0 for s in harc_scores],
                name="HARC layer score",
                yaxis="y2",
                opacity=0.3,
            )
        )
        fig.update_layout(yaxis2={"overlaying": "y", "side": "right", "title": "HARC layer score"})
    fig.update_layout(
        title="Direction selection",
        xaxis_title="layer slot",
        yaxis_title="refusal score",
        template="plotly_white",
    )
    return fig
