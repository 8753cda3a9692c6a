"""The HumanEval sandbox and harness: confined execution, and programs built from chat answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from harc_interp.evaluation.humaneval import checked_program, humaneval_problems, program_for
from harc_interp.evaluation.sandbox import isolation, run_many, run_python

REPO = Path(__file__).resolve().parents[1]


def test_a_correct_and_a_wrong_solution_are_scored_right():
    assert run_python("assert sum([1, 2]) == 3").passed
    wrong = run_python("assert sum([1, 2]) == 4")
    assert wrong.status == "failed" and "AssertionError" in wrong.detail


def test_the_sandbox_kills_an_infinite_loop_and_a_memory_bomb():
    loop = run_python("while True:\n    pass", timeout_s=2)
    assert loop.status == "timeout"
    bomb = run_python("x = []\nwhile True:\n    x.append(bytearray(10**7))", timeout_s=20, memory_mb=256)
    assert bomb.status == "failed" and "MemoryError" in bomb.detail


def test_a_solution_cannot_touch_the_repository_the_network_or_start_processes(tmp_path):
    target = REPO / "zz_sandbox_escape"
    attempts = [
        f"open({str(target)!r}, 'w').write('x')",
        f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
        f"import os\nos.remove({str(REPO / 'README.md')!r})",
        f"import subprocess\nsubprocess.run(['touch', {str(target)!r}])",
        "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)",
    ]
    for result in run_many(attempts, timeout_s=5):
        assert result.status == "failed" and "PermissionError" in result.detail, result
    assert not target.exists() and (REPO / "README.md").is_file()
    inside = run_python("open('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'")
    assert inside.passed  # its own working directory is writable


@pytest.mark.skipif(isolation() != "namespaces", reason="no Linux user namespaces here")
def test_with_namespaces_every_mount_is_read_only_and_the_workdir_a_tmpfs():
    program = """
import os
mounts = [line.split() for line in open('/proc/self/mounts')]
root = [m for m in mounts if m[1] == '/'][-1]
assert 'ro' in root[3].split(','), root
cwd = [m for m in mounts if m[1] == os.getcwd()][-1]
assert cwd[2] == 'tmpfs', cwd
"""
    assert run_python(program).passed


def test_programs_from_answers_pass_with_the_reference_and_fail_with_a_stub():
    problems = humaneval_problems()
    assert len(problems) == 164
    sample = problems[:: len(problems) // 12]
    fenced = [f"Here it is:\n```python\n{p['prompt']}{p['canonical_solution']}```\nDone." for p in sample]
    stub = [f"```python\n{p['prompt']}    return None\n```" for p in sample]
    bare = [p["canonical_solution"] for p in sample]  # a body that continues the prompt
    for answers, expected in ((fenced, True), (bare, True), (stub, False)):
        results = run_many([checked_program(p, a) for p, a in zip(sample, answers, strict=True)])
        assert [r.passed for r in results] == [expected] * len(sample)
    # a full function replaces the prompt's stub; the prompt's helpers stay above it
    helper = next(p for p in problems if p["entry_point"] == "decode_cyclic")
    program = program_for(helper, "```python\ndef decode_cyclic(s):\n    return s\n```")
    assert program.index("def encode_cyclic") < program.rindex("def decode_cyclic")
