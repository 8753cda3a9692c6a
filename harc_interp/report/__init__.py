"""The report layer: plotly figure builders and each stage's figures, the HTML report, and the main
pipeline that chains the stages."""

from .figures import (
    pareto_front,
    plane_figures,
    tradeoff_figure,
    write_directions_figures,
    write_figure,
    write_plane_figures,
    write_tradeoff_figure,
    write_trajectory_figures,
)
from .html import write_report
from .pipeline import run_main

__all__ = [
    "pareto_front",
    "plane_figures",
    "run_main",
    "tradeoff_figure",
    "write_directions_figures",
    "write_figure",
    "write_plane_figures",
    "write_report",
    "write_tradeoff_figure",
    "write_trajectory_figures",
]
