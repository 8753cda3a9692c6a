"""`harc` command line: a thin wrapper over the library, one module per group of verbs. Never prints
model completions."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ..coupling.loop import init_distributed, world
from ..errors import HarcError
from ..model.hooked import resolve_device
from . import attack_verbs, data_verbs, directions_verbs, intervention_verbs, judge_verbs, plane_verbs
from .common import check_output, record_output


def build_parser() -> argparse.ArgumentParser:
    """The `harc` argument parser: one subcommand per verb (the CLI reference page is generated from it)."""
    parser = argparse.ArgumentParser(
        prog="harc", description="Harmfulness and refusal directions in chat LLMs."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for verbs in (directions_verbs, data_verbs, plane_verbs, intervention_verbs, judge_verbs, attack_verbs):
        verbs.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `harc` with `argv` (default: the process's); returns the exit status. A `HarcError` prints one
    line naming the problem, not a traceback. Launched by `torchrun` / `accelerate launch` (WORLD_SIZE >
    1), the processes join one group and train data-parallel (`coupling.loop`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    out = getattr(args, "out", None)
    try:
        if init_distributed() and args.device.startswith("cuda") and ":" not in args.device:
            args.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per process
        resolve_device(args.device)  # a missing GPU is named before anything loads
        if out is not None:
            check_output(args)
        result = args.func(args)
        if out is not None:
            record_output(args)
    except HarcError as e:
        print(f"harc {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f" in {out}" if out is not None else ""
        print(
            f"harc {args.command}: interrupted; finished steps are kept{where}: rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    if world()[0] == 0:  # under torchrun every process has the same result: one copy printed
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
