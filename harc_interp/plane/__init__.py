"""Stage 2, the plane: its bases and coordinates, attack-class geometry and separability, the study
prompt sets, and response trajectories on the response-side directions."""

from .basis import (
    AXIS_TITLES,
    BASES,
    PlaneBasis,
    PlaneCoordinates,
    basis_from_directions,
    plane_basis,
    plane_basis_matrix,
    plane_coordinates,
)
from .geometry import ClassGeometry, PlaneGeometry, class_geometry, group_of, separability, suppression
from .stage import PlaneConfig, PlaneResult, coords_rows, run_plane, write_plane_run
from .study import study_prompts
from .trajectories import TrajectoryConfig, TrajectoryResult, run_trajectories

__all__ = [
    "AXIS_TITLES",
    "BASES",
    "ClassGeometry",
    "PlaneBasis",
    "PlaneConfig",
    "PlaneCoordinates",
    "PlaneGeometry",
    "PlaneResult",
    "TrajectoryConfig",
    "TrajectoryResult",
    "basis_from_directions",
    "class_geometry",
    "coords_rows",
    "group_of",
    "plane_basis",
    "plane_basis_matrix",
    "plane_coordinates",
    "run_plane",
    "run_trajectories",
    "separability",
    "study_prompts",
    "suppression",
    "write_plane_run",
]
