"""Every config field is reachable from the command line: flags, --config FILE (TOML/JSON) and --set,
with defaults only in the config dataclasses and errors that name the field."""

from __future__ import annotations

import json

import pytest

from harc_interp import DirectionsConfig, HarcError, LoraConfig, PlaneConfig, SubspaceConfig
from harc_interp.cli import build_parser, main
from harc_interp.cli.directions_verbs import directions_config
from harc_interp.cli.intervention_verbs import train_configs


def parse(*argv):
    return build_parser().parse_args(list(argv))


def test_defaults_come_from_the_dataclasses():
    args = parse("directions", "--harmful", "h", "--harmless", "b", "--out", "o")
    assert directions_config(args) == DirectionsConfig()
    args = parse("train", "--directions", "d", "--out", "o")
    assert train_configs(args) == SubspaceConfig()
    assert train_configs(parse("train", "--directions", "d", "--out", "o", "--mode", "lora")) == LoraConfig()


def test_file_then_set_then_flags(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        "[directions]\nn_train = 64\nkl_max = 0.2\nselection_slots = [3, 4]\n\n[train]\nsteps = 7\n"
    )
    args = parse(
        "directions", "--harmful", "h", "--harmless", "b", "--out", "o", "--config", str(toml),
        "--set", "directions.kl_max=0.3", "--set", 'directions.harmful_prefill="Sure"', "--n-train", "32",
    )  # fmt: skip
    cfg = directions_config(args)
    assert (cfg.n_train, cfg.kl_max, cfg.selection_slots, cfg.harmful_prefill) == (32, 0.3, (3, 4), "Sure")
    # The same file serves `train`: its train section sets the mode's loop, --set reaches any LoRA field.
    args = parse(
        "train", "--directions", "d", "--out", "o", "--mode", "lora", "--config", str(toml),
        "--set", "lora.r=4", "--set", "lora.target_modules=[\"q_proj\"]", "--lr", "0.001",
    )  # fmt: skip
    lora = train_configs(args)
    assert (lora.r, lora.target_modules, lora.train.steps, lora.train.lr) == (4, ("q_proj",), 7, 0.001)
    assert lora.train.warmup_steps == LoraConfig().train.warmup_steps  # the mode's own loop defaults stay
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"subspace": {"hidden": 8, "read_slots": [1]}}))
    sub = train_configs(
        parse("train", "--directions", "d", "--out", "o", "--config", str(json_file), "--margin", "2")
    )
    assert (sub.hidden, sub.read_slots, sub.margin) == (8, (1,), 2.0)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "directions.n_trian=3"], "unknown fields ['n_trian']"),
        (["--set", "nosuch.x=1"], "unknown config sections ['nosuch']"),
        (["--set", "directions.kl_max=high"], "directions.kl_max: 'high' is not a valid"),
        (["--set", "n_train=3"], "--set takes SECTION.FIELD=VALUE"),
        (["--set", "directions.n_train=1"], "n_train, n_val and n_test must be at least 2"),
        (["--config", "no-such-file.toml"], "--config no-such-file.toml: no such file"),
    ],
)
def test_bad_settings_are_named_before_anything_loads(extra, message, capsys):
    argv = ["directions", "--harmful", "starter:harmful", "--harmless", "starter:harmless", "--out", "o"]
    assert main([*argv, "--model", "no-such-model-dir/", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert "no-such-model-dir" not in err  # the config was checked before the model was looked for


def test_a_corrupt_config_file_is_named(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[directions\nn_train = 3")
    assert main(["plane", "--directions", "d", "--prompts", "p", "--out", "o", "--config", str(bad)]) == 2
    assert "is not valid TOML" in capsys.readouterr().err


def test_build_config_refuses_a_section_field_of_another_config():
    from harc_interp.cli.common import build_config

    args = parse("plane", "--directions", "d", "--prompts", "p", "--out", "o", "--set", "plane.margin=1")
    with pytest.raises(HarcError, match="PlaneConfig has"):
        build_config(PlaneConfig, "plane", args)
