"""Static copies of the report's figures (PNG and SVG), for papers.

plotly's own export (kaleido) needs a Chrome or Chromium on the machine; where there is none, the same
data is drawn with matplotlib: the traces the figure shows (a slider's active step only), their colours,
line styles, marker symbols and filled bands, grouped bars, horizontal reference lines, stacked panels
and a right-hand axis. Either way each file says which renderer made it (`static_renderer`).
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from pathlib import Path

import plotly.graph_objects as go

log = logging.getLogger(__name__)

FORMATS = ("png", "svg")
_SYMBOLS = {"circle": "o", "x": "x", "star": "*", "square": "s", "diamond": "D", "cross": "P"}
_DASHES = {"dash": "--", "dot": ":", "dashdot": "-.", "solid": "-", None: "-"}


def static_renderer() -> str:
    """'kaleido' when plotly can export through a Chrome/Chromium here, else 'matplotlib'."""
    global _RENDERER
    if _RENDERER is None:
        _RENDERER = "kaleido" if _kaleido_works() else "matplotlib"
    return _RENDERER


_RENDERER: str | None = None


def _kaleido_works(start_timeout_s: float = 60.0) -> bool:
    """Start kaleido's browser once for the process (a fresh Chrome per image costs ~2 s, a kept one
    ~0.2 s) and check that it exports. Without a Chrome on the machine, kaleido's server start blocks
    forever, so look for the browser first and bound the start."""
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError as e:
        log.info("plotly's static export is unavailable (%s); figures are drawn with matplotlib", e)
        return False
    if Chromium.find_browser(skip_local=False) is None:
        log.info("no Chrome/Chromium for plotly's static export; figures are drawn with matplotlib")
        return False
    outcome: list[BaseException | None] = []
    probe = threading.Thread(target=lambda: outcome.append(_start_kaleido()), daemon=True)
    probe.start()
    probe.join(start_timeout_s)
    if not outcome or outcome[0] is not None:
        why = outcome[0] if outcome else f"no answer in {start_timeout_s:.0f} s"
        log.info("plotly's static export is unavailable (%s); figures are drawn with matplotlib", why)
        return False
    return True


def _start_kaleido() -> BaseException | None:
    """None when kaleido's kept browser is up and exports a small figure, else the error."""
    try:
        import atexit

        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            go.Figure(go.Scatter(x=[0, 1], y=[0, 1])).to_image(format="png", width=50, height=50)
        return None
    except Exception as e:  # a Chrome kaleido cannot drive
        return e


def write_static(fig: go.Figure, stem: Path) -> list[Path]:
    """`stem.png` and `stem.svg` of `fig` (atomically), with kaleido or else matplotlib."""
    paths = [stem.with_suffix(f".{fmt}") for fmt in FORMATS]
    if static_renderer() == "kaleido":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "kopts ignored when using a server": the kept browser
            for path in paths:
                _atomic(path, lambda tmp, path=path: fig.write_image(tmp, format=path.suffix[1:], scale=2))
        return paths
    mfig = to_matplotlib(fig)
    try:
        for path in paths:
            _atomic(path, lambda tmp, path=path: mfig.savefig(tmp, format=path.suffix[1:], dpi=200))
    finally:
        import matplotlib.pyplot as plt

        plt.close(mfig)
    return paths


def _atomic(path: Path, write) -> None:
    from ..artifacts import tmp_beside

    tmp = tmp_beside(path)
    try:
        write(str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def to_matplotlib(fig: go.Figure):
    """A matplotlib Figure drawing what `fig` shows."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    layout = fig.layout
    panels = _panels(layout)
    mfig, axes = plt.subplots(
        len(panels), 1, figsize=(9, 4.2 * len(panels)), sharex=len(panels) > 1, squeeze=False
    )
    ax_of = {}
    for (name, axis), ax in zip(panels, axes[:, 0], strict=True):
        ax_of[name] = ax
        _axis_labels(ax, layout, name, axis)
    for name, overlay in _overlays(layout).items():
        twin = ax_of[overlay].twinx()
        ax_of[name] = twin
        twin.set_ylabel(_text(getattr(layout, _layout_key(name)).title))
    colours = iter(_colourway(layout))
    bars = [t for t in fig.data if isinstance(t, go.Bar) and t.visible in (None, True)]
    for trace in fig.data:
        if trace.visible not in (None, True):
            continue
        ax = ax_of.get(trace.yaxis or "y", axes[0, 0])
        if isinstance(trace, go.Bar):
            _bar(ax, trace, bars, next(colours))
        elif isinstance(trace, go.Scatter):
            _scatter(ax, trace, colours)
    for shape in layout.shapes or ():
        if shape.type == "line" and shape.y0 == shape.y1:
            ax = ax_of.get(_yref(shape.yref), axes[0, 0])
            ax.axhline(
                shape.y0,
                color=_colour(shape.line.color) or "black",
                ls=_DASHES.get(shape.line.dash, "--"),
                lw=1,
            )
    for ann in layout.annotations or ():
        if (
            ann.text
            and ann.yref
            and ann.y is not None
            and _yref(ann.yref) in ax_of
            and "domain" not in ann.yref
        ):
            ax = ax_of[_yref(ann.yref)]
            ax.annotate(
                ann.text, (1, ann.y), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8
            )
    handles = [h for ax in ax_of.values() for h in ax.get_legend_handles_labels()[0]]
    if handles:
        labels = [lab for ax in ax_of.values() for lab in ax.get_legend_handles_labels()[1]]
        legend = axes[0, 0].legend(handles, labels, fontsize=7, loc="best", framealpha=0.8)
        for handle in legend.legend_handles:  # one size: where marker size is data, the legend names
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([30])
    mfig.suptitle(_text(layout.title), fontsize=11)
    mfig.tight_layout()
    return mfig


def _layout_key(axis_name: str) -> str:
    """'y2' -> 'yaxis2', 'x' -> 'xaxis'."""
    return f"{axis_name[0]}axis{axis_name[1:]}"


def _yref(ref: str | None) -> str:
    return (ref or "y").replace(" domain", "")


def _panels(layout) -> list[tuple[str, object]]:
    """The y axes that are panels of their own (not overlays), top first."""
    names = ["y"] + sorted(
        (k.replace("yaxis", "y") for k in layout.to_plotly_json() if re.fullmatch(r"yaxis\d+", k)),
        key=lambda n: int(n[1:]),
    )
    own = [
        (n, getattr(layout, _layout_key(n))) for n in names if not getattr(layout, _layout_key(n)).overlaying
    ]
    return sorted(own, key=lambda p: -(p[1].domain[1] if p[1].domain else 1))


def _overlays(layout) -> dict[str, str]:
    out = {}
    for key in layout.to_plotly_json():
        if re.fullmatch(r"yaxis\d+", key) and getattr(layout, key).overlaying:
            out[key.replace("yaxis", "y")] = getattr(layout, key).overlaying
    return out


def _axis_labels(ax, layout, y_name: str, yaxis) -> None:
    ax.set_ylabel(_text(yaxis.title))
    if yaxis.range:
        ax.set_ylim(*yaxis.range)
    x_name = "x" + y_name[1:]
    xaxis = getattr(layout, _layout_key(x_name), None)
    if xaxis is not None:
        ax.set_xlabel(_text(xaxis.title))
    title = next(
        (
            a.text
            for a in layout.annotations or ()
            if a.yref == "paper" and yaxis.domain and abs(a.y - yaxis.domain[1]) < 0.02
        ),
        None,
    )
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _text(title) -> str:
    return (getattr(title, "text", None) or "").replace("<br>", "\n")


def _colourway(layout):
    from plotly.colors import qualitative

    way = (
        list(layout.template.layout.colorway or qualitative.Plotly) if layout.template else qualitative.Plotly
    )
    while True:
        yield from way


def _colour(c):
    """A plotly colour as matplotlib takes it ('rgba(r,g,b,a)' -> a tuple)."""
    if not isinstance(c, str):
        return c
    m = re.fullmatch(r"rgba?\(([^)]*)\)", c.replace(" ", ""))
    if not m:
        return c
    parts = [float(v) for v in m.group(1).split(",")]
    return (*(v / 255 for v in parts[:3]), parts[3] if len(parts) > 3 else 1.0)


def _scatter(ax, t: go.Scatter, colours) -> None:
    import numpy as np

    x, y = np.asarray(t.x, dtype=float), np.asarray(t.y, dtype=float)
    label = t.name if t.showlegend is not False else None
    alpha = t.opacity if t.opacity is not None else 1.0
    mode = t.mode or "lines"
    if t.fill == "toself":
        ax.fill(x, y, color=_colour(t.fillcolor) or next(colours), lw=0, label=label)
        return
    colour = _colour(t.line.color or t.marker.color) if not isinstance(t.marker.color, tuple | list) else None
    colour = colour or next(colours)
    if "lines" in mode:
        width = t.line.width if t.line.width is not None else 1.8
        ax.plot(
            x,
            y,
            color=colour,
            ls=_DASHES.get(t.line.dash, "-"),
            lw=width,
            alpha=alpha,
            label=label,
            marker="o" if "markers" in mode else None,
            ms=3,
        )
        return
    symbols = t.marker.symbol
    symbols = list(symbols) if isinstance(symbols, tuple | list) else [symbols or "circle"] * len(x)
    size = t.marker.size if isinstance(t.marker.size, int | float) else 7
    m_alpha = t.marker.opacity if isinstance(t.marker.opacity, int | float) else alpha
    edge = _colour(t.marker.line.color) if t.marker.line and t.marker.line.color else None
    order = sorted(dict.fromkeys(symbols), key=lambda s: s != "circle")  # the legend shows the plain symbol
    for k, sym in enumerate(order):
        keep = np.array([s == sym for s in symbols])
        marker = _SYMBOLS.get(sym, "o")
        ax.scatter(
            x[keep],
            y[keep],
            s=(size * 1.1) ** 2 / 2,
            marker=marker,
            color=colour,
            alpha=m_alpha,
            edgecolors=edge if marker not in ("x", "P") else None,
            label=label if k == 0 else None,
        )


def _bar(ax, t: go.Bar, bars: list, colour) -> None:
    import numpy as np

    same_axis = [b for b in bars if (b.yaxis or "y") == (t.yaxis or "y")]
    n, k = len(same_axis), same_axis.index(t)
    categorical = any(isinstance(v, str) for v in t.x)
    xs = np.arange(len(t.x)) if categorical else np.asarray(t.x, dtype=float)
    width = 0.8 / n
    colour = _colour(t.marker.color) or colour
    ax.bar(
        xs + (k - (n - 1) / 2) * width, t.y, width=width, color=colour, alpha=t.opacity or 1.0, label=t.name
    )
    if categorical:
        ax.set_xticks(xs, list(t.x), rotation=30, ha="right", fontsize=8)
