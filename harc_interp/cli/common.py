"""What every verb shares: model options, prompt files, and configs built from one place.

A verb's settings come from its config dataclasses, in this order (later wins): the dataclass defaults,
the sections of `--config FILE` (TOML or JSON; one file can serve every verb: each reads its own
sections), `--set SECTION.FIELD=VALUE` (any field, from the command line), then the verb's own flags.
Flags for config fields default to None, so the defaults live only in the dataclasses; help texts read
them from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tomllib
import types
import typing
from pathlib import Path

from ..errors import HarcError
from ..model.offline import DEFAULT_MODEL

log = logging.getLogger("harc_interp.cli")

# Sections a config file may hold, and the dataclass each one fills (imported where used).
SECTIONS = (
    "cache",
    "directions",
    "plane",
    "trajectories",
    "subspace",
    "lora",
    "training",
    "train",
    "eval",
    "splits",
    "verify",
    "gcg",
    "pair",
)


def default(cls, name: str):
    """The dataclass default of `cls.name`, for help texts (the one place defaults live)."""
    f = cls.__dataclass_fields__[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def model_args(p: argparse.ArgumentParser) -> None:
    """The flags every model-loading verb shares: --model, --dtype, --device, --batch-size, --system-
    prompt, --quiet, --force, --skip-long, --config, --set."""
    p.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"alias, HF dir, .gguf file or hub id (default {DEFAULT_MODEL})",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--device-map",
        default=None,
        help="spread a model too large for one GPU over every GPU with accelerate (auto, balanced, "
        "sequential; then CPU memory, then disk): instead of --device",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="prompts per forward pass (default 16; the directions stage generates 64 at a time)",
    )
    p.add_argument("--system-prompt", default=None, help="system message (default: the template's own)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true", help="write into an --out folder that holds another run")
    p.add_argument(
        "--skip-long",
        action="store_true",
        help="skip prompts longer than the model's context (default: an error)",
    )
    p.add_argument(
        "--config",
        default=None,
        help=f"TOML or JSON file of config sections ({', '.join(SECTIONS)}); fields as in the config dataclasses",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="set any config field (repeatable; VALUE is JSON, else a string), e.g. lora.r=8 train.steps=100",
    )


def heldout_args(p: argparse.ArgumentParser) -> None:
    """--classes, --heldout and --seed: which prompts a verb that reads a Directions artifact studies."""
    p.add_argument("--classes", default=None, help="comma-separated attack classes to keep (default: all)")
    p.add_argument(
        "--heldout",
        action="store_true",
        help="drop prompts (and goals) the directions were computed or selected on (the artifact's splits)",
    )
    p.add_argument("--seed", type=int, default=None)


def config_sections(args) -> dict[str, dict]:
    """The config file's sections with the --set overrides applied."""
    sections: dict[str, dict] = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise HarcError(f"--config {path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HarcError(
                f"--config {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}"
            ) from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise HarcError(f"--config {path} must map section names to tables of fields")
        sections = {k: dict(v) for k, v in data.items()}
    for item in args.set:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise HarcError(f"--set takes SECTION.FIELD=VALUE (e.g. train.steps=100), got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *nested, field = name.split(".")  # lora.train.steps=100: a field of a nested config
        table = sections.setdefault(section, {})
        for part in nested:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise HarcError(f"--set {item!r}: {section}.{part} is set to a value, not a table of fields")
        table[field] = value
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise HarcError(f"unknown config sections {unknown}; known: {', '.join(SECTIONS)}")
    return sections


def build_config(cls, section: str, args, flags: dict | None = None, base=None, **fixed):
    """A `cls` config: `base` (or the defaults), then the file/--set section, then the flags given on
    the command line (None: not given), then `fixed`. Unknown fields and invalid values are errors that
    name them; validation itself is the dataclass's `__post_init__`."""
    values = dict(config_sections(args).get(section, {}))
    fields = cls.__dataclass_fields__
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise HarcError(
            f"config section '{section}' has unknown fields {unknown}; {cls.__name__} has {sorted(fields)}"
        )
    values |= {k: v for k, v in (flags or {}).items() if v is not None}
    values |= fixed
    values = _typed(
        cls, values, section, lambda k: getattr(base, k) if base is not None else _default(fields[k])
    )
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except TypeError as e:
        raise HarcError(f"config section '{section}': {e}") from None


def _typed(cls, values: dict, where: str, current) -> dict:
    """Field values of `cls` from file/flag values: a table given for a nested config changes only the
    fields it names in `current(field)` (`lora.train.steps=100` keeps the LoRA mode's learning rate)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in values.items():
        now = current(k)
        if isinstance(v, dict) and dataclasses.is_dataclass(now):
            fields = type(now).__dataclass_fields__
            unknown = sorted(set(v) - set(fields))
            if unknown:
                raise HarcError(
                    f"{where}.{k} has unknown fields {unknown}; {type(now).__name__} has {sorted(fields)}"
                )
            nested = _typed(type(now), v, f"{where}.{k}", lambda f, now=now: getattr(now, f))
            try:
                out[k] = dataclasses.replace(now, **nested)
            except TypeError as e:
                raise HarcError(f"{where}.{k}: {e}") from None
        else:
            out[k] = _coerce(v, hints[k], f"{where}.{k}")
    return out


def _default(f: dataclasses.Field):
    """A dataclass field's default value (None when it has none)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _coerce(value, hint, where: str):
    """JSON/TOML values to the field's type: lists to tuples, ints to floats, tables to nested configs."""
    origin = typing.get_origin(hint)
    options = typing.get_args(hint) if origin in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for opt in options:
        if dataclasses.is_dataclass(opt) and isinstance(value, dict):
            return opt(**value)
        if dataclasses.is_dataclass(opt) and dataclasses.is_dataclass(value):
            return value
        if typing.get_origin(opt) is tuple and isinstance(value, list | tuple):
            return tuple(value)
        if opt is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if (
            opt in (int, float, str, bool)
            and isinstance(value, opt)
            and not (opt is int and isinstance(value, bool))
        ):
            return value
        if typing.get_origin(opt) is tuple and isinstance(value, tuple):
            return value
    raise HarcError(f"{where}: {value!r} is not a valid {hint}")


def int_list(text: str | None) -> tuple[int, ...] | None:
    """Comma-separated layer slots as a tuple (None stays None, '' is empty); `HarcError` on a non-integer."""
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise HarcError(f"expected comma-separated layer slots, got {text!r}") from None


def str_list(text: str | None) -> tuple[str, ...] | None:
    """Comma-separated names as a tuple (None stays None, '' is empty)."""
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())


def load_prompt_files(paths: list[str], label: str | None, limit: int | None):
    """Prompt files (or starter:/hf: specs) concatenated into one set, optionally labelled and sampled down
    to `limit`; templates alone are an error."""
    from ..data.prompts import load_prompts

    sets = [load_prompts(p, label=label) for p in paths]
    ps = sets[0]
    for s in sets[1:]:
        ps = ps + s
    if ps.templates and not ps.prompts:
        raise HarcError("these files hold only attack templates; fill them with goals first (expand_attacks)")
    return ps.sample(limit, seed=0) if limit else ps


def load_role(paths: list[str], role: str, limit: int | None):
    """Prompt files as `role` prompts; rows whose own label says the opposite are left out, loudly."""
    from ..data.prompts import as_role

    ps, dropped = as_role(load_prompt_files(paths, None, None), role)
    if dropped:
        log.warning(
            "left %d rows of %s out of the %s prompts: their own label says otherwise (e.g. %s)",
            len(dropped), ", ".join(paths), role, dropped[0],
        )  # fmt: skip
    if not ps.prompts:
        raise HarcError(f"no {role} prompts in {', '.join(paths)}")
    return ps.sample(limit, seed=0) if limit else ps


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (a --limit of 0 or -2 is a mistake, not 'all')."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def load(args, spec: str | None = None):
    """The model the verb names (or `spec`: a judge, an attacker), on the device or device map it names."""
    from ..model.hooked import load_model

    return load_model(
        spec or args.model,
        dtype=args.dtype,
        device=args.device,
        device_map=args.device_map,
        progress=not args.quiet,
    )


def judge_args(p: argparse.ArgumentParser) -> None:
    """--judge for a verb that judges attack success."""
    p.add_argument(
        "--judge",
        default="phrase",
        help="attack success judge: phrase (refusal phrases anywhere, the default), phrase-prefix, or a "
        "prompt-aware model judge, model:MODEL (its chat template; offline: qwen2.5-coder-1.5b-instruct) or "
        "model-raw:MODEL (e.g. cais/HarmBench-Llama-2-13b-cls): attack success is then judged harmful "
        "compliance, with the phrase rates beside it; over-refusal stays with the phrase judge",
    )


def judges(args, out: Path):
    """(refusal judge, harm judge or None) for --judge: a model judge is the harm judge (its verdicts
    cached in OUT/judge_cache.json) beside the default phrase judge."""
    from ..capture.judges import DEFAULT_JUDGE
    from ..capture.model_judge import ModelJudge
    from ..evaluation.judging import make_judge

    judge = make_judge(args.judge, lambda spec: load(args, spec), cache_path=out / "judge_cache.json")
    return (DEFAULT_JUDGE, judge) if isinstance(judge, ModelJudge) else (judge, None)


def read_directions(args):
    """The Directions artifact of --directions, read before the model loads (its model is checked by
    `attach_model`)."""
    from ..directions.artifact import Directions

    return Directions.load(args.directions)


def attach_model(args, directions):
    """The model, with the directions checked against it (weights and chat template)."""
    from ..data.chat import formatter_for

    model = load(args)
    directions.check_model(model, formatter_for(model, args.system_prompt).template_hash)
    return model


def within_context(model, args, ps, reserve: int = 0):
    """`ps` without prompts longer than the model's context (less `reserve` tokens for the answers a
    verb generates or teacher-forces): named in an error, or with --skip-long dropped with a count."""
    from ..data.chat import formatter_for
    from ..data.prompts import PromptSet

    long = formatter_for(model, args.system_prompt).too_long(ps.texts, reserve)
    if not long:
        return ps
    ids = [ps.prompts[i].id for i in long]
    if not getattr(args, "skip_long", False):
        room = f" less {reserve} for the answer" if reserve else ""
        raise HarcError(
            f"{len(ids)} prompt(s) are longer than the model's context of {model.context_length} tokens"
            f"{room}, e.g. '{ids[0]}': shorten them or pass --skip-long"
        )
    log.warning("skipped %d prompt(s) longer than the context (e.g. %s)", len(ids), ids[0])
    keep = set(range(len(ps))) - set(long)
    return PromptSet(ps.name, tuple(p for i, p in enumerate(ps.prompts) if i in keep), ps.templates)


# ------------------------------------------------------------------------------------------------
# The --out folder: checked before anything loads, claimed by the run that finished in it

RUN_FILE = "harc_run.json"
_NOT_IN_KEY = ("quiet", "force", "func", "batch_size", "device", "skip_long")


def run_key(args) -> dict:
    """What a verb's output depends on: its arguments (not how fast or where it ran) and its configs."""
    values = {k: v for k, v in vars(args).items() if k not in _NOT_IN_KEY}
    return {
        "command": args.command,
        "args": json.loads(json.dumps(values, default=str)),
        "config": config_sections(args),
    }


def check_output(args) -> None:
    """--out must be a folder that can be written, and hold no finished run of other inputs (unless
    --force): a finished run is never overwritten by a different one by accident."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise HarcError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".harc_write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise HarcError(f"--out {out} cannot be written ({e.strerror})") from None
    claimed = out / RUN_FILE
    if claimed.is_file() and not args.force:
        from ..artifacts import read_json

        if read_json(claimed).get("key") != run_key(args):
            raise HarcError(
                f"--out {out} holds a finished `harc {read_json(claimed).get('key', {}).get('command')}` run of "
                "other inputs: choose a new --out, or pass --force to write over it"
            )


def record_output(args) -> None:
    """Mark `--out` as holding a finished run of these arguments (`harc_run.json`)."""
    from ..artifacts import provenance, write_json

    write_json(Path(args.out) / RUN_FILE, {"key": run_key(args), "provenance": provenance()})
