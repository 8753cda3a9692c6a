"""`harc compare`: HARC beside the baselines, every method judged by the same evaluation on the same
held-out split, calibrated or trained on the training split only.

Each method's result is cached in `out/methods/NAME/result.json` (keyed on the model, the splits and
the settings), so a killed run resumes without redoing finished methods; HumanEval and the adaptive
attack have their own caches beside it, so asking for them later measures only them. `comparison.json` and
`comparison.md` gather one row per method; the trade-off figure plots attack success against
over-refusal.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..artifacts import cached_json, provenance, write_json, write_text
from ..attacks import GCG, GCGConfig, attack_summary, run_goals
from ..baselines.inference import (
    SelfReminder,
    SmoothLLM,
    SteeringCalibration,
    actadd_variant,
    calibrate_coefficient,
    calibrate_condition,
    cast_variant,
)
from ..baselines.training import TRAINING_METHODS, TrainingBaselineConfig, baseline_variant, train_baseline
from ..capture.judges import DEFAULT_JUDGE, Judge
from ..capture.model_judge import ModelJudge
from ..capture.responding import respond
from ..coupling.load import load_intervention
from ..coupling.loop import TrainConfig
from ..coupling.lora import LoraConfig, train_lora
from ..coupling.subspace import SubspaceConfig, train_subspace
from ..data.prompts import PromptSet
from ..errors import HarcError
from ..model.edits import Variant
from ..model.hooked import HarcModel
from .humaneval import HumanEvalConfig, humaneval_pass_at_1
from .safety import EvalConfig, evaluate_safety

INFERENCE_METHODS = ("actadd", "cast", "self_reminder", "smoothllm")
DEFAULT_METHODS = ("base", "harc", *INFERENCE_METHODS)  # the training-time ones on request (minutes each)
METHODS = (*DEFAULT_METHODS, "harc_lora", *TRAINING_METHODS)  # harc_lora: the paper's LoRA objective


@dataclass(frozen=True)
class CompareConfig:
    """What `compare` runs: the methods, the shared evaluation, the steering calibration, SmoothLLM's
    ensemble, the training-time baselines' hyperparameters (`training`), HARC's LoRA mode's (`lora`, for
    `harc_lora`), HumanEval (`humaneval`: number of problems, 0 for none), the throughput probe
    (`throughput_prompts` harmless held-out prompts answered with `throughput_tokens` tokens) and, with
    `adaptive`, the same budgeted GCG run against every method, defence active, on the first
    `adaptive_goals` held-out harmful goals."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(samples=4))
    calibration: SteeringCalibration = field(default_factory=SteeringCalibration)
    smoothllm: SmoothLLM = field(default_factory=SmoothLLM)
    training: TrainingBaselineConfig = field(default_factory=TrainingBaselineConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    humaneval: int = 0
    throughput_prompts: int = 8
    throughput_tokens: int = 32
    adaptive: GCGConfig | None = None
    adaptive_goals: int = 20

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise HarcError(f"unknown methods {unknown}: choose from {', '.join(METHODS)}")
        if not self.methods:
            raise HarcError("compare needs at least one method")
        if self.adaptive_goals < 1:
            raise HarcError(f"adaptive_goals must be at least 1, got {self.adaptive_goals}")


@dataclass(frozen=True)
class ComparePreset:
    """A named set of `compare` settings: the config (every method) and the split's attack-class cap
    (`max_per_class`, None: SplitConfig's). `harc compare --preset NAME` applies it; flags override it."""

    config: CompareConfig
    max_per_class: int | None = None


# The METHOD's results (§6) are 7–8B models on a GPU. It names no counts, so each number comes from a
# convention: 512 new tokens is HarmBench's generation length (a classifier judge reads the answer, not
# its opening), 8 samples per safe prompt the design notes' sampled over-refusal, 10 copies at 10% swaps
# SmoothLLM's reference setting, all 164 HumanEval problems the helpfulness benchmark, 64 validation
# rows per group and 64 prompts per attack class so that a 1-prompt change is under 2 points; the
# training-time baselines get the LoRA budget the METHOD gives HARC's own LoRA, whose schedule is this
# (METHOD §5: AdamW lr 1e-4 after 100 warm-up steps, accumulation 2, 400 steps, the low end of 400–2000).
_PAPER_LORA_LOOP = TrainConfig(
    steps=400, lr=1e-4, warmup_steps=100, grad_accumulation=2, checkpoint_every=50, log_every=10
)
PRESETS: dict[str, ComparePreset] = {
    "paper": ComparePreset(
        CompareConfig(
            eval=EvalConfig(max_new_tokens=512, batch_size=64, samples=8),
            calibration=SteeringCalibration(max_new_tokens=64, max_per_group=64, batch_size=64),
            smoothllm=SmoothLLM(n_copies=10, rate=0.1, kind="swap"),
            # The METHOD's LoRA budget (r 32, α 64, its schedule, 6 unsafe + 6 safe examples per
            # micro-batch) for every training-time baseline alike, on 128-token answers.
            training=TrainingBaselineConfig(
                r=32,
                alpha=64,
                n_response=128,
                batch_size=64,
                n_unsafe=6,
                n_safe=6,
                train=_PAPER_LORA_LOOP,
            ),
            # HARC's LoRA mode as released (METHOD §5): 6 harmful + 4 harmless + 2 borderline per
            # micro-batch, directions re-extracted every 200 steps
            lora=LoraConfig(
                r=32,
                alpha=64,
                n_harmful=6,
                n_harmless=4,
                n_borderline=2,
                reextract_every=200,
                batch_size=64,
                train=_PAPER_LORA_LOOP,
            ),
            humaneval=164,
            throughput_prompts=32,
            throughput_tokens=128,
        ),
        max_per_class=64,
    ),
}
"""Named `compare` settings. "paper": GPU scale (pair it with `--device cuda --dtype bfloat16`)."""


def _prepare(name, model, directions, train, out: Path, cfg: CompareConfig, coupling_dir, subspace, judge):
    """One method's setup record: what it was calibrated or trained to on `train` only (coefficients,
    condition, coupling or adapter path), enough for `_open` to rebuild it without redoing the work."""
    slot = directions.selected_layer
    if slot is None:
        raise HarcError("the directions artifact has no selected layer: run `harc directions` to the end")
    if name in ("base", "self_reminder"):
        return {"trainable_parameters": 0}
    if name == "harc":
        path = Path(coupling_dir) if coupling_dir else out / "coupling"
        if not coupling_dir:
            train_subspace(model, directions, train, path, subspace or SubspaceConfig(), progress=False)
        from ..coupling.maps import CouplingIntervention

        n = sum(p.numel() for p in CouplingIntervention.load(path).parameters())
        return {"trainable_parameters": n, "coupling": str(path)}
    if name == "actadd":
        cal = calibrate_coefficient(
            model, lambda c: actadd_variant(model, directions, slot, c), train, cfg.calibration, judge
        )
        return {"trainable_parameters": 0, "slot": slot, "calibration": cal}
    if name == "cast":
        cond = calibrate_condition(model, directions, train, slot, cfg.calibration)
        cal = calibrate_coefficient(
            model,
            lambda c: cast_variant(model, directions, cond["slot"], cond["threshold"], slot, c),
            train,
            cfg.calibration,
            judge,
        )
        return {"trainable_parameters": 0, "slot": slot, "condition": cond, "calibration": cal}
    if name == "smoothllm":
        return {"trainable_parameters": 0, "smoothllm": asdict(cfg.smoothllm)}
    if name == "harc_lora":
        start = time.perf_counter()
        adapter = train_lora(model, directions, train, out / "coupling", cfg.lora, judge, progress=False)
        return {
            "trainable_parameters": _adapter_size(adapter),
            "training_seconds": round(time.perf_counter() - start, 1),
            "adapter": str(adapter),
        }
    if name in TRAINING_METHODS:
        # the generated training answers are shared by every training-time method of this comparison
        data_dir = out.parent.parent / "training_data"
        rec = train_baseline(model, name, train, out, cfg.training, judge, data_dir=data_dir, progress=False)
        keep = ("trainable_parameters", "training_seconds", "data_seconds", "adapter", "slots", "n_examples")
        return {k: rec[k] for k in (*keep, "final_losses")}
    raise HarcError(f"unknown method {name!r}")


def _open(name: str, record: dict, model: HarcModel, directions, cfg: CompareConfig):
    """A context that opens to the method's Variant, rebuilt from its `_prepare` record."""
    if name == "base":
        return _plain(Variant(name="base"))
    if name == "harc":
        return _tuned(model, Path(record["coupling"]))
    if name == "actadd":
        return _plain(actadd_variant(model, directions, record["slot"], record["calibration"]["coefficient"]))
    if name == "cast":
        cond, coefficient = record["condition"], record["calibration"]["coefficient"]
        return _plain(
            cast_variant(model, directions, cond["slot"], cond["threshold"], record["slot"], coefficient)
        )
    if name == "self_reminder":
        return _plain(Variant(name=name, prompts=SelfReminder()))
    if name == "smoothllm":
        return _plain(Variant(name=name, prompts=cfg.smoothllm))
    return baseline_variant(model, Path(record["adapter"]), name)  # harc_lora and the training-time ones


def _adapter_size(adapter_dir: Path) -> int:
    """Parameters in a saved peft adapter."""
    from safetensors import safe_open

    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


class _plain:
    """A context that opens to a ready Variant."""

    def __init__(self, variant: Variant):
        self.variant = variant

    def __enter__(self) -> Variant:
        return self.variant

    def __exit__(self, *exc) -> None:
        return None


class _tuned:
    """A context that opens a trained intervention's tuned Variant."""

    def __init__(self, model: HarcModel, path: Path):
        self.cm = load_intervention(model, path)

    def __enter__(self) -> Variant:
        tuned, _ = self.cm.__enter__()
        return Variant(tuned.hooks, tuned.context, name="harc", prompts=tuned.prompts)

    def __exit__(self, *exc):
        return self.cm.__exit__(*exc)


def throughput(model: HarcModel, variant: Variant, prompts: PromptSet, cfg: CompareConfig) -> float:
    """Tokens of the returned answers per second of generation (an ensemble pays for all its copies)."""
    ps = prompts.sample(min(cfg.throughput_prompts, len(prompts)))
    start = time.perf_counter()
    answers = respond(
        model,
        variant,
        ps.texts,
        ps.ids,
        system_prompt=cfg.eval.system_prompt,
        max_new_tokens=cfg.throughput_tokens,
        batch_size=cfg.eval.batch_size,
    )
    seconds = time.perf_counter() - start
    tokens = sum(len(model.tokenizer(a.text, add_special_tokens=False)["input_ids"]) for a in answers)
    return tokens / seconds


def compare_methods(
    model: HarcModel,
    directions,
    train: dict[str, PromptSet],
    held_out: dict[str, PromptSet],
    out_dir: str | Path,
    config: CompareConfig | None = None,
    *,
    coupling_dir: str | Path | None = None,
    subspace: SubspaceConfig | None = None,
    judge: Judge = DEFAULT_JUDGE,
    harm_judge: ModelJudge | None = None,
    progress: bool = True,
) -> dict:
    """Every method of `config` set up on `train` and evaluated on `held_out` (the same prompts, judges,
    white-box attack slot and settings for all); writes comparison.json/.md (the CLI adds the trade-off figure)
    to `out_dir`. `coupling_dir`: HARC's coupling, already trained on this `train` split (default:
    trained here with the calibrated defaults). With `harm_judge`, attack success is judged harmful
    compliance (`evaluate_safety`); calibrations and training data keep the refusal `judge`."""
    config = config or CompareConfig()
    out = Path(out_dir)
    attack_slot = directions.selected_layer
    key = {
        "fingerprint": model.fingerprint,
        "train": {k: list(v.ids) for k, v in train.items()},
        "held_out": {k: list(v.ids) for k, v in held_out.items()},
        "eval": asdict(config.eval),
        "judge": repr(judge),
        **({"harm_judge": harm_judge.name} if harm_judge else {}),
    }
    rows = {}
    for name in config.methods:
        method_dir = out / "methods" / name

        def run(name=name, method_dir=method_dir) -> dict:
            start = time.perf_counter()
            record = _prepare(
                name, model, directions, train, method_dir, config, coupling_dir, subspace, judge
            )
            setup_s = time.perf_counter() - start
            with _open(name, record, model, directions, config) as variant:
                safety = evaluate_safety(
                    model,
                    **held_out,
                    directions=directions,
                    attack_slot=attack_slot,
                    tuned=variant,
                    base=Variant(),
                    judge=judge,
                    harm_judge=harm_judge,
                    config=config.eval,
                    responses_path=method_dir / "responses.json",
                    progress=progress,
                )
            return record | {"method": name, "safety": safety, "setup_seconds": round(setup_s, 1)}

        extra = {"coupling_dir": str(coupling_dir)} if name == "harc" and coupling_dir else {}
        if name in TRAINING_METHODS:  # keyed only where it matters: other methods' caches stay valid
            extra = {"training": asdict(config.training)}
        if name == "harc_lora":
            extra = {"lora": asdict(config.lora)}
        method_key = key | {"method": name, "calibration": asdict(config.calibration)} | extra
        method_key |= {"smoothllm": asdict(config.smoothllm)}
        row = cached_json(method_dir / "result.json", run, key=method_key)
        # Capability and the adaptive attack are cached on their own, so asking for them later (or for
        # more HumanEval problems) reopens the finished method instead of redoing its evaluation.
        if config.humaneval:

            def run_humaneval(name=name, method_dir=method_dir, row=row) -> dict:
                with _open(name, row, model, directions, config) as variant:
                    return humaneval_pass_at_1(
                        model,
                        variant,
                        HumanEvalConfig(limit=config.humaneval, batch_size=config.eval.batch_size),
                        responses_path=method_dir / "humaneval.json",
                        progress=progress,
                    )

            row["humaneval"] = cached_json(
                method_dir / "humaneval_result.json",
                run_humaneval,
                key=method_key | {"humaneval": config.humaneval},
            )
        if config.adaptive:

            def run_adaptive(name=name, method_dir=method_dir, row=row) -> dict:
                with _open(name, row, model, directions, config) as variant:
                    return adaptive_attack(
                        model,
                        variant,
                        held_out["harmful"],
                        method_dir / "adaptive",
                        config,
                        harm_judge or judge,
                        progress,
                    )

            row["adaptive"] = cached_json(
                method_dir / "adaptive_result.json",
                run_adaptive,
                key=method_key
                | {"adaptive": asdict(config.adaptive), "adaptive_goals": config.adaptive_goals},
            )
        rows[name] = row
    # Speed is measured afresh for every method, back to back in this process (never cached): a ratio
    # to base is only meaningful when both sides ran on the same machine under the same load. One
    # unmeasured plain pass first, so no row pays for the warm-up.
    throughput(model, Variant(), held_out["harmless"], config)
    for name, row in rows.items():
        with _open(name, row, model, directions, config) as variant:
            row["tokens_per_second"] = round(throughput(model, variant, held_out["harmless"], config), 1)
    base_tps = rows["base"]["tokens_per_second"] if "base" in rows else None
    table = [_row(r, base_tps) for r in rows.values()]
    result = {
        "methods": table,
        "attack_slot": attack_slot,
        "n": {k: len(v) for k, v in held_out.items()},
        "provenance": provenance(
            model, judge=repr(judge), **({"harm_judge": harm_judge.name} if harm_judge else {})
        ),
    }
    write_json(out / "comparison.json", result)
    write_text(out / "comparison.md", comparison_markdown(result))
    return result


def adaptive_attack(
    model: HarcModel,
    variant: Variant,
    harmful: PromptSet,
    out: Path,
    config: CompareConfig,
    judge: Judge | ModelJudge,
    progress: bool,
) -> dict:
    """GCG with `config.adaptive`'s budget against `variant` (its defence active in every pass) on the
    first `config.adaptive_goals` held-out harmful goals; every attempt stays under `out` (resumable).
    Returns `attack_summary`'s numbers (ids, flags and counts only)."""
    goals = harmful.prompts[: config.adaptive_goals]
    attack = GCG(model, variant, config.adaptive, judge)
    key = {
        "method": "gcg",
        "model": model.fingerprint,
        "config": asdict(config.adaptive),
        "goals": [g.id for g in goals],
        "judge": getattr(judge, "name", repr(judge)),
    }
    results = run_goals(goals, out, key, attack.attack, seed=config.adaptive.seed, progress=progress)
    return attack_summary("gcg", results, asdict(config.adaptive))


def _row(r: dict, base_tps: float | None) -> dict:
    s = r["safety"]
    wb = s.get("white_box_asr", {})
    he = r.get("humaneval")
    return {
        "method": r["method"],
        "mean_asr": s["mean_asr"],
        "phrase_mean_asr": s["phrase_asr"]["mean_asr"] if "phrase_asr" in s else None,
        "asr_by_class": s["asr_by_class"],
        "plain_harmful_asr": s["plain_harmful_asr"],
        "v_ref_upstream_asr": wb.get("v_ref_ablated_upstream"),
        "v_harm_upstream_asr": wb.get("v_harm_ablated_upstream"),
        "over_refusal": s["over_refusal"],
        "over_refusal_sampled": s.get("over_refusal_sampled"),
        "harmless_refusal": s["harmless_refusal"],
        "humaneval_pass_at_1": None if he is None else he["pass_at_1"],
        "adaptive_gcg_asr": (r.get("adaptive") or {}).get("attack_success"),
        "harmless_kl": s["harmless_kl"],
        "trainable_parameters": r["trainable_parameters"],
        "setup_seconds": r["setup_seconds"],
        "throughput_vs_base": None if not base_tps else r["tokens_per_second"] / base_tps,
    }


COLUMNS = (
    ("method", "method", "{}"),
    ("mean ASR", "mean_asr", "{:.3f}"),
    ("mean ASR, phrase judge", "phrase_mean_asr", "{:.3f}"),
    ("plain harmful ASR", "plain_harmful_asr", "{:.3f}"),
    ("v_ref upstream ASR", "v_ref_upstream_asr", "{:.3f}"),
    ("v_harm upstream ASR", "v_harm_upstream_asr", "{:.3f}"),
    ("over-refusal", "over_refusal", "{:.3f}"),
    ("over-refusal sampled", "over_refusal_sampled", "{:.3f}"),
    ("harmless refusal", "harmless_refusal", "{:.3f}"),
    ("HumanEval pass@1", "humaneval_pass_at_1", "{:.3f}"),
    ("adaptive GCG ASR", "adaptive_gcg_asr", "{:.3f}"),
    ("harmless KL", "harmless_kl", "{:.4f}"),
    ("trainable params", "trainable_parameters", "{:,}"),
    ("setup s", "setup_seconds", "{:.0f}"),
    ("tokens/s vs base", "throughput_vs_base", "{:.2f}"),
)


def comparison_markdown(result: dict) -> str:
    """The comparison as a Markdown table, one row per method (lower ASR and over-refusal are better)."""
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|" + "---|" * len(COLUMNS)
    lines = [head, rule]
    for row in result["methods"]:
        cells = ["–" if row[k] is None else fmt.format(row[k]) for _, k, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    n, prov = result["n"], result["provenance"]
    judged = (
        f"judged harmful compliance with the request, by `{prov['harm_judge']}` (the phrase judge's rate "
        "of answers not refused beside it)"
        if prov.get("harm_judge")
        else f"the share of harmful requests not refused, by the judge `{prov.get('judge', '')[:40]}…`"
    )
    note = (
        f"\nHeld out: {n}. Attack success (ASR) is {judged}; white-box rows ablate the direction upstream of "
        f"slot {result['attack_slot']}.\n"
    )
    return "\n".join(lines) + "\n" + note
