"""MkDocs hook: the CLI reference page is generated from `harc`'s own argument parser at build time,
so it cannot drift from the code (a page with the marker gets every verb's `--help`)."""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- harc-cli-reference -->"


def cli_reference() -> str:
    from harc_interp.cli import build_parser

    os.environ.setdefault("COLUMNS", "110")  # argparse wraps at the terminal width: make it fixed
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    parts = []
    for name, verb in sub.choices.items():
        parts.append(f"## harc {name}\n\n{helps.get(name) or ''}\n\n```text\n{verb.format_help()}```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown
