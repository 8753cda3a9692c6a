"""Running untrusted Python (a model's HumanEval solution) in a separate, confined process.

Never in the calling process. Each program runs in its own `python -I -B` with:
- a wall-clock timeout (the whole process group is killed), CPU-time, address-space and file-size
  limits (an infinite loop or a memory bomb fails that problem, nothing else);
- where Linux user namespaces are available (`unshare -rmn`): no network (an empty network
  namespace), every mount read-only and a fresh tmpfs as the working directory, so nothing the program
  writes outlives it or reaches the repository;
- in every case an audit hook installed before the program runs that refuses writes outside the
  working directory, sockets, subprocesses, forks and ctypes (the only barrier where namespaces are
  not available: `isolation()` says which applies).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# Prepended to every program (formatted with the limits): the process limits itself first (soft and
# hard: it cannot raise them again), then installs the audit hook (which Python cannot remove).
_GUARD = r"""
import os as _os, sys as _sys, resource as _rs
for _lim, _v in ((_rs.RLIMIT_AS, {memory}), (_rs.RLIMIT_CPU, {cpu}), (_rs.RLIMIT_FSIZE, {fsize}), (_rs.RLIMIT_CORE, 0)):
    _rs.setrlimit(_lim, (_v, _v))
def _sandbox_guard(event, args, _root=_os.path.realpath(_os.getcwd()), _os=_os):
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or bool(
            (flags or 0) & (_os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_APPEND | _os.O_TRUNC))
        if writing and not isinstance(path, int):
            real = _os.path.realpath(_os.fsdecode(path))
            if real != _root and not real.startswith(_root + _os.sep):
                raise PermissionError(f"sandbox: no writes outside the working directory ({real})")
    elif event in ("os.remove", "os.rename", "os.rmdir", "os.unlink", "shutil.rmtree", "os.chmod",
                   "os.chown", "os.truncate", "os.link", "os.symlink"):
        for p in args:
            if isinstance(p, (str, bytes, _os.PathLike)):
                real = _os.path.realpath(_os.fsdecode(p))
                if real != _root and not real.startswith(_root + _os.sep):
                    raise PermissionError(f"sandbox: {event} outside the working directory")
    elif event.startswith(("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "ctypes.")) or (
        event in ("os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn")
    ):
        raise PermissionError(f"sandbox: {event} is not allowed")
_sys.addaudithook(_sandbox_guard)
del _sandbox_guard, _os, _sys, _rs, _lim, _v
"""

# Inside the new user + mount + network namespace: every mount read-only, a tmpfs as the workdir.
_CONFINE = r"""
while read -r _ m _; do mount -o remount,bind,ro "$m" 2>/dev/null || true; done < /proc/self/mounts
mount -t tmpfs -o size=64m,mode=700 tmpfs "$1" && cd "$1" && shift && exec "$@"
"""


@dataclass(frozen=True)
class SandboxResult:
    status: str  # "passed" (exit 0), "failed" (an exception, a failed assert, killed by a limit) or "timeout"
    detail: str = ""  # the last line of stderr (the exception), or why it was stopped

    @property
    def passed(self) -> bool:
        """Whether the tests ran and passed."""
        return self.status == "passed"


@functools.cache
def isolation() -> str:
    """ "namespaces" when `unshare -rmn` works here (no network, read-only mounts), else "audit-hook"."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "audit-hook"
    try:
        probe = subprocess.run(["unshare", "-rmn", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "audit-hook"
    return "namespaces" if probe.returncode == 0 else "audit-hook"


def run_python(program: str, *, timeout_s: float | int = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run `program` in a confined subprocess (see the module notes); passed when it exits with 0."""
    workdir = tempfile.mkdtemp(prefix="harc_sandbox_")
    cmd = [sys.executable, "-I", "-B", "-"]
    if isolation() == "namespaces":
        cmd = ["unshare", "-rmn", "--propagation", "private", "sh", "-c", _CONFINE, "confine", workdir, *cmd]
    guard = _GUARD.replace("{memory}", str(memory_mb * 2**20)).replace("{cpu}", str(int(timeout_s) + 1))
    guard = guard.replace("{fsize}", str(16 * 2**20))

    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "PYTHONHASHSEED": "0"}
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=workdir,
            env=env,
            start_new_session=True,  # its own process group: a timeout kills everything it started
            text=True,
        )
        try:
            _, err = proc.communicate(guard + "\n" + program, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return SandboxResult("timeout", f"killed after {timeout_s:g} s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if proc.returncode == 0:
        return SandboxResult("passed")
    lines = [line for line in err.strip().splitlines() if line.strip()]
    detail = lines[-1][:200] if lines else f"exit status {proc.returncode}"
    if proc.returncode < 0:
        detail = f"killed by signal {-proc.returncode} ({detail})"
    return SandboxResult("failed", detail)


def run_many(
    programs: Sequence[str],
    *,
    timeout_s: float | int = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
) -> list[SandboxResult]:
    """`run_python` on each program, a few at a time (each in its own process), in order."""
    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: run_python(p, timeout_s=timeout_s, memory_mb=memory_mb), programs))
