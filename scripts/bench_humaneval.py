"""Benchmark: HumanEval pass@1 of the plain model and of a coupling (greedy, tests in the sandbox), with
the batched generation path against one prompt at a time, and the batched model judge against one pair
at a time, each measured on the same inputs in the same process.

Prints pass@1 per side with its run time and tokens/s, and the two speed-ups. Each side's result is
cached in --out (a rerun resumes); answers and verdicts stay there, never in the output.

    python scripts/bench_humaneval.py --coupling runs/main/coupling --out runs/humaneval
    python scripts/bench_humaneval.py --limit 16 --judge-model qwen2.5-coder-1.5b-instruct \\
        --judge-responses runs/main/eval/responses_base.json --out runs/he16
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path


def main() -> None:
    from harc_interp import load_model
    from harc_interp.artifacts import cached_json, read_json
    from harc_interp.capture.model_judge import ModelJudge
    from harc_interp.capture.responding import respond
    from harc_interp.coupling.load import load_intervention
    from harc_interp.evaluation.humaneval import (
        INSTRUCTION,
        HumanEvalConfig,
        humaneval_pass_at_1,
        humaneval_problems,
    )
    from harc_interp.model.edits import Variant

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--coupling", default=None, help="a `harc train` / main-job coupling folder")
    ap.add_argument("--limit", type=int, default=None, help="the first N problems (default: all 164)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--speed-problems", type=int, default=8, help="problems for the batched-vs-one test")
    ap.add_argument("--speed-tokens", type=int, default=128)
    ap.add_argument("--judge-model", default=None, help="also time the model judge (e.g. the 1.5B alias)")
    ap.add_argument("--judge-responses", default=None, help="a responses.json whose pairs the judge reads")
    ap.add_argument("--judge-pairs", type=int, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    model = load_model(args.model, dtype="float32", progress=False)
    config = HumanEvalConfig(limit=args.limit, batch_size=args.batch_size)
    # Only what the pass@1 depends on: a rerun that adds the judge timing reuses both sides.
    key = {"model": model.fingerprint, "config": asdict(config), "coupling": args.coupling}
    results = {}

    def side(name: str, variant: Variant) -> dict:
        return cached_json(
            out / f"{name}.json",
            lambda: humaneval_pass_at_1(
                model, variant, config, out / f"humaneval_{name}.json", progress=False
            ),
            key=key | {"side": name},
        )

    if args.coupling:
        with load_intervention(model, args.coupling) as (tuned, base):
            results["base"] = side("base", base)
            results["coupled"] = side("coupled", tuned)
    else:
        results["base"] = side("base", Variant())
    for name, r in results.items():
        print(
            f"{name:8s} pass@1 {r['pass_at_1']:.3f} ({r['passed']}/{r['n']}), generation {r['generation_seconds']:.0f} s "
            f"at {r['tokens_per_second']:.1f} tok/s, tests {r['tests_seconds']:.1f} s, timeouts {r['timeouts']}, "
            f"unfinished {r['unfinished_answers']}"
        )

    # Batched generation against one prompt at a time, the same prompts and length.
    problems = humaneval_problems(args.speed_problems)
    texts = [INSTRUCTION.format(prompt=p["prompt"]) for p in problems]
    ids = [p["task_id"] for p in problems]
    speeds = {}
    for batch in (1, len(texts)):
        start = time.perf_counter()
        answers = respond(model, Variant(), texts, ids, max_new_tokens=args.speed_tokens, batch_size=batch)
        speeds[batch] = sum(a.n_tokens for a in answers) / (time.perf_counter() - start)
    print(
        f"generation: {speeds[len(texts)]:.1f} tok/s batched ({len(texts)}) vs {speeds[1]:.1f} one at a time: "
        f"{speeds[len(texts)] / speeds[1]:.2f}x"
    )
    summary = {"humaneval": results, "generation_tokens_per_second": {str(k): v for k, v in speeds.items()}}

    if args.judge_model and args.judge_responses:
        rows = [r for group in read_json(args.judge_responses).values() for r in group][: args.judge_pairs]
        pairs = [(r["prompt"], r["response"]) for r in rows]
        judge_model = load_model(args.judge_model, dtype="float32", progress=False)
        times, scores = {}, {}
        for batch in (1, 8):
            judge = ModelJudge(judge_model, batch_size=batch)  # no cache: every pair is scored
            start = time.perf_counter()
            scores[batch] = judge.p_yes(pairs)
            times[batch] = time.perf_counter() - start
        gap = max(abs(a - b) for a, b in zip(scores[1], scores[8], strict=True))
        print(
            f"model judge: {len(pairs) / times[8]:.2f} pairs/s batched (8) vs {len(pairs) / times[1]:.2f} one at "
            f"a time: {times[1] / times[8]:.2f}x; largest P(yes) difference {gap:.1e}"
        )
        summary["judge_pairs_per_second"] = {str(k): len(pairs) / t for k, t in times.items()}
        summary["judge_batched_vs_one_max_gap"] = gap
    (out / "bench.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
