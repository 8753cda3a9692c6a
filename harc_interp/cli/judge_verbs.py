"""`harc judge`: re-judge saved responses (`harc eval`'s responses.json) without generating, and report
how the judges agree. Prints rates and agreement only, never a completion."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import HarcError
from .common import load, model_args


def add_parsers(sub) -> None:
    """Add `judge`."""
    judge = sub.add_parser("judge", help="re-judge a saved responses.json; judge agreement -> OUT/judge.json")
    model_args(judge)  # --model is unused here: judge models come with --judge model:SPEC
    judge.add_argument("--responses", required=True, help="a responses.json written by `harc eval`")
    judge.add_argument(
        "--judge",
        default="phrase",
        help="phrase, phrase-prefix, model:MODEL (its chat template) or model-raw:MODEL",
    )
    judge.add_argument("--compare", default=None, help="a second judge to measure agreement with")
    judge.add_argument("--out", required=True)
    judge.set_defaults(func=cmd_judge)


def cmd_judge(args: argparse.Namespace) -> dict:
    """`harc judge`: re-judge a saved responses.json, with agreement against a second judge."""
    from ..artifacts import provenance, read_json, stamp_schema, write_json
    from ..evaluation.judging import agreement, check_responses, make_judge, refusal_score, rejudge

    path = Path(args.responses)
    if not path.is_file():
        raise HarcError(f"--responses {path} does not exist")
    groups = check_responses(read_json(path), str(path))

    judges = {args.judge: make_judge(args.judge, lambda spec: load(args, spec))}
    if args.compare:
        judges[args.compare] = make_judge(args.compare, lambda spec: load(args, spec))
    verdicts = {spec: rejudge(groups, judge) for spec, judge in judges.items()}
    summary = {"responses": str(path), "judges": list(judges), "groups": {}}
    for name, rows in groups.items():
        saved = [bool(r["refusal"]) for r in rows if "refusal" in r]
        row = {"n": len(rows)}
        for spec, v in verdicts.items():
            refused = [x.refused for x in v[name]]
            row[spec] = {"refusal_rate": sum(refused) / len(refused) if refused else None}
            if len(saved) == len(rows):
                row[spec]["agreement_with_saved"] = agreement(saved, refused)
        if args.compare:
            a, b = ([x.refused for x in verdicts[s][name]] for s in judges)
            row["agreement"] = agreement(a, b)
            gaps = sorted(
                (
                    (abs(refusal_score(x) - refusal_score(y)), r["id"])
                    for x, y, r in zip(*(verdicts[s][name] for s in judges), rows, strict=True)
                ),
                reverse=True,
            )
            row["most_disagreed_ids"] = [i for gap, i in gaps[:5] if gap > 0]
        summary["groups"][name] = row
    out = Path(args.out)
    judged = {
        spec: {
            name: [dict(id=r["id"], **vars(x)) for r, x in zip(groups[name], v[name], strict=True)]
            for name in groups
        }
        for spec, v in verdicts.items()
    }
    write_json(out / "judged.json", judged)
    write_json(out / "judge.json", stamp_schema(summary | {"provenance": provenance()}, "judge", 1))
    return {"out": str(out / "judge.json"), "groups": summary["groups"]}
