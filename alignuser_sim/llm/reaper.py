"""Run a command and take its whole process group down with it: the vLLM server's process-group leader.

    python alignuser_sim/llm/reaper.py [--grace S] [--parent PID] -- ARGV...
    python -m alignuser_sim.llm.reaper [--grace S] [--parent PID] -- ARGV...

`VLLMServer` starts this in a new session (so the reaper's pid is the group id), with PR_SET_PDEATHSIG
asking the kernel to SIGTERM it when the Python that started it dies. The reaper runs ARGV as its child
in the same group (stdin/stdout/stderr inherited: the server log keeps working) and then:

- on SIGTERM, SIGINT or SIGHUP (the launcher's `stop()`, the parent-death signal, a user), or when its
  parent process is gone (`--parent PID`: a fallback for a missed parent-death signal), it SIGTERMs
  the whole group except itself, waits up to the grace period (`--grace`, else the environment variable
  ALIGNUSER_SIM_REAPER_GRACE_S, else 10 s) for the child to exit and the group to empty, then SIGKILLs
  what is left;
- when the child exits on its own, it does the same to any leftovers in the group (vLLM's EngineCore)
  and exits with the child's code (128+N when the child died of signal N).

Without the reaper the kernel's parent-death signal reaches only the group leader: the API server's
children (EngineCore, workers) outlive a parent killed by SIGKILL or an unhandled SIGTERM. If the reaper
itself is SIGKILLed (a Ray worker that exits SIGKILLs its direct children), the kernel SIGTERMs its child,
the API server, which then shuts its engine down as on any SIGTERM.

It imports only the standard library (contextlib, ctypes, os, signal, subprocess, sys, time) and is run by its
file path, so it costs ~12 MB and no package import per server. Linux: it reads /proc to see who is left
in the group (elsewhere it only waits for the child).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

GRACE_ENV = "ALIGNUSER_SIM_REAPER_GRACE_S"
DEFAULT_GRACE_S = 10.0
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
POLL_S = 0.1
USAGE = "usage: reaper [--grace SECONDS] [--parent PID] -- ARGV..."


def others_in_group(pgid: int) -> list[int] | None:
    """Pids of the live (non-zombie) processes in group `pgid` other than this one; None without /proc."""
    me, want = os.getpid(), str(pgid).encode()
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    found = []
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and fields[2] == want:
            found.append(int(name))
    return found


def _signal(pid: int, sig: int, *, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        (os.killpg if group else os.kill)(pid, sig)


def terminate_group(child: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the group (not this process), wait up to grace_s for the child to exit and every other
    member to go, then SIGKILL the members that are left, one by one."""
    for sig in HANDLED:  # from now on nothing interrupts the shutdown (SIGKILL still can)
        signal.signal(sig, signal.SIG_IGN)
    pgid = os.getpgrp()
    _signal(pgid, signal.SIGTERM, group=True)
    deadline = time.monotonic() + grace_s
    while True:
        child.poll()
        left = others_in_group(pgid)
        if child.returncode is not None and not left:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    for _ in range(50):  # members may fork while being killed: repeat until none is left
        left = others_in_group(pgid)
        if left is None:
            if child.poll() is None:
                _signal(child.pid, signal.SIGKILL)
            break
        if not left:
            break
        for pid in left:
            _signal(pid, signal.SIGKILL)
        time.sleep(0.02)
    with contextlib.suppress(subprocess.TimeoutExpired):
        child.wait(timeout=5)


def sigterm_when_parent_dies() -> object:
    """A preexec_fn asking the kernel to SIGTERM the child when the process forking it dies (Linux; else
    None). The launcher uses it for the reaper (the Python that started the server dies), the reaper for
    the server: the one death the reaper cannot handle is its own SIGKILL, and Ray sends exactly that (a
    Ray worker that exits SIGKILLs its direct children, RAY_kill_child_processes_on_worker_exit, and the
    reaper is one when a vLLM replica actor is killed); without it the server would live on, parentless."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def parse_args(args: list[str]) -> tuple[float, int | None, list[str]]:
    grace = float(os.environ.get(GRACE_ENV) or DEFAULT_GRACE_S)
    parent = None
    i = 0
    while i < len(args) and args[i] != "--":
        if args[i] in ("--grace", "--parent") and i + 1 < len(args):
            if args[i] == "--grace":
                grace = float(args[i + 1])
            else:
                parent = int(args[i + 1])
            i += 2
        else:
            raise ValueError(f"unexpected argument {args[i]!r}")
    command = args[i + 1 :]
    if not command:
        raise ValueError("no command after --")
    return grace, parent, command


def main(args: list[str] | None = None) -> int:
    try:
        grace_s, parent, command = parse_args(sys.argv[1:] if args is None else args)
    except ValueError as exc:
        print(f"reaper: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)

    for sig in HANDLED:  # before the child starts: a signal from now on is never lost
        signal.signal(sig, on_signal)
    if os.getpgrp() != os.getpid():  # run without a session of its own: never take the caller's group down
        os.setpgid(0, 0)
    if parent is not None and os.getppid() != parent:
        return 128 + signal.SIGTERM  # the parent died before its death signal was armed
    try:
        child = subprocess.Popen(command, preexec_fn=sigterm_when_parent_dies())  # noqa: PLW1509
    except OSError as exc:
        print(f"reaper: cannot run {command[0]}: {exc}", file=sys.stderr)
        return 127
    while child.poll() is None and not received and (parent is None or os.getppid() == parent):
        time.sleep(POLL_S)
    terminate_group(child, grace_s)
    code = child.returncode
    if code is None:
        return 128 + (received[0] if received else signal.SIGTERM)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
