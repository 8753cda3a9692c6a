"""Notebooks run top to bottom on the tiny model (the real model is a parameter away)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_tiny_model(path, tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HARC_NOTEBOOK_MODEL", str(tiny_dir))
    monkeypatch.setenv("HARC_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("HARC_NOTEBOOK_OUT", str(tmp_path / "out"))
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"
    ]
    assert not errors
    assert os.environ.get("HARC_NOTEBOOK_MODEL") == str(tiny_dir)
