"""Benchmark: the directions stage's wall time per step, and the refusal-direction selection with the
shared-prefix / resumed forward (`PromptSweep`) against the full forward from the embeddings, on the
same validation prompts in the same process.

Prints the per-step table, seconds per scored slot for both selection paths and the speed-up, the
largest score difference between them (target: the same slot, scores within 1e-5 … 1e-4), and how
often a shorter generation cap would change the filter's refusal decisions (the judge reads the
start of the answer).

    python scripts/bench_directions.py                      # 128 + 128 prompts, 0.5B, CPU float32
    python scripts/bench_directions.py --n-train 32 --compare-slots 4,12
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    from harc_interp import load_model, load_prompts, starter_prompts
    from harc_interp.capture.judges import DEFAULT_JUDGE
    from harc_interp.data.chat import formatter_for
    from harc_interp.directions.selection import arditi_select
    from harc_interp.directions.stage import DirectionsConfig, extract_directions

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--n-train", type=int, default=128)
    ap.add_argument("--n-val", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=32)
    ap.add_argument("--compare-slots", default="", help="slots for the full-forward comparison (default all)")
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one; reuse it to resume)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    if (SHARED / "harmful_dev.jsonl").is_file():
        harmful, harmless = (load_prompts(SHARED / f"{k}_dev.jsonl") for k in ("harmful", "harmless"))
    else:
        harmful, harmless = starter_prompts("harmful"), starter_prompts("harmless")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_directions_"))
    t = time.perf_counter()
    model = load_model(args.model, dtype=args.dtype, device=args.device, progress=False)
    load_s = time.perf_counter() - t
    cfg = DirectionsConfig(n_train=args.n_train, n_val=args.n_val, n_test=args.n_test)
    t = time.perf_counter()
    d = extract_directions(model, harmful, harmless, out, cfg, progress=False)
    total = time.perf_counter() - t
    print(f"model {model.name}, {model.n_layers} layers, {args.device} {args.dtype}; load {load_s:.1f} s")
    print(
        f"directions stage on {args.n_train} + {args.n_train} prompts: {total:.1f} s ({total / 60:.1f} min)"
    )
    for step, s in d.meta["seconds"].items():
        print(f"  {step:<24} {s:8.1f} s")
    print(f"  selected slot {d.selected_layer} ({d.selection.method})")

    fmt = formatter_for(model, cfg.system_prompt)
    ids = d.splits
    by_id = {p.id: p.prompt for p in (harmful + harmless).prompts}
    val_h, val_b = (fmt.format_many([by_id[i] for i in ids[f"{c}_val"]]) for c in ("harmful", "harmless"))
    slots = [int(s) for s in args.compare_slots.split(",") if s] or None
    runs = {}
    for reuse in (True, False):
        t = time.perf_counter()
        best, cands, _ = arditi_select(
            model, d, val_h, val_b, d.refusal_tokens, slots=slots, batch_size=cfg.batch_size,
            reuse=reuse, progress=False,
        )  # fmt: skip
        runs[reuse] = (time.perf_counter() - t, best, cands)
    n_scored = sum(c.induce_score == c.induce_score for c in runs[True][2])
    fast, full = runs[True][0], runs[False][0]
    print(f"selection over {n_scored} scored slots on {len(val_h)} + {len(val_b)} validation prompts:")
    print(f"  shared prefix + resume  {fast:7.1f} s ({fast / max(n_scored, 1):.1f} s/slot)")
    print(f"  full forward            {full:7.1f} s ({full / max(n_scored, 1):.1f} s/slot)")
    print(f"  speed-up                {full / fast:7.2f}x")
    diffs = [
        abs(getattr(a, f) - getattr(b, f))
        for a, b in zip(runs[True][2], runs[False][2], strict=True)
        for f in ("bypass_score", "induce_score", "kl")
        if getattr(a, f) == getattr(a, f)
    ]
    same = (runs[True][1] and runs[True][1].slot) == (runs[False][1] and runs[False][1].slot)
    print(f"  max |score difference|  {max(diffs, default=0):.2e}; same pick: {same}")

    print("generation cap: refusal decisions that change if the answer were cut to N tokens")
    for name in ("harmful", "harmless", "harmful_prefill"):
        rows = json.loads((out / "work" / f"generations_{name}.json").read_text())
        for cap in (8, 16, 24):
            flips = sum(
                DEFAULT_JUDGE(model.tokenizer.decode(r["response_ids"][:cap], skip_special_tokens=True))
                != r["refusal"]
                for r in rows
            )
            print(f"  {name:<16} cap {cap:>2}: {flips}/{len(rows)} change")


if __name__ == "__main__":
    main()
