from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the suite never touches the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tiny import build_tiny_model_dir  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "qwen-tiny")


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from harc_interp import load_model

    return load_model(str(tiny_dir))


@pytest.fixture(scope="session")
def real():
    """The offline default model; built from its PyPI chunk packages on first use."""
    from harc_interp import load_model

    return load_model()
