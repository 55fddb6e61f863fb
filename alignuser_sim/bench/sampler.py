"""CPU time and RSS of processes picked by command line, read from /proc in a thread.

A benchmark measures the processes it cares about from outside (Ray titles its actors
`ray::ClassName...`), including processes born while it runs; `usage(t0, t1)` then gives each group's
CPU seconds within a time window and its peak memory. Linux only (/proc).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _proc_sample(pid: int) -> tuple[str, float, int] | None:
    """(command line, CPU seconds user+system, RSS bytes) of a live process, from /proc."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except (OSError, IndexError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK
    return cmdline, cpu, int(statm[1]) * _PAGE


@dataclass
class _Track:
    group: str
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (time, cpu s, rss bytes)


class ProcessSampler:
    """CPU seconds and RSS of the processes `classify(pid, cmdline) -> group | None` picks, sampled every
    `interval_s` in a thread (processes may appear while it runs). `usage(t0, t1)` gives, per group, the
    CPU spent between two wall-clock times and the peak RSS summed over the group's processes."""

    def __init__(self, classify: Callable[[int, str], str | None], interval_s: float = 0.2):
        self.classify, self.interval_s = classify, interval_s
        self.tracks: dict[int, _Track] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        now = time.time()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            got = _proc_sample(pid)
            if got is None:
                continue
            cmdline, cpu, rss = got
            track = self.tracks.get(pid)
            if track is None:
                group = self.classify(pid, cmdline)
                if group is None:
                    continue
                track = self.tracks[pid] = _Track(group)
            track.samples.append((now, cpu, rss))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def start(self) -> ProcessSampler:
        self.sample()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="process-sampler")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with contextlib.suppress(OSError):
            self.sample()

    def usage(self, t0: float = 0.0, t1: float = math.inf) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for track in self.tracks.values():
            inside = [s for s in track.samples if t0 <= s[0] <= t1]
            before = [s for s in track.samples if s[0] < t0]
            if not inside:
                continue
            start_cpu = before[-1][1] if before else 0.0  # a process born during the window: all its CPU
            g = out.setdefault(track.group, {"processes": 0, "cpu_s": 0.0, "rss_peak_mb": 0.0})
            g["processes"] += 1
            g["cpu_s"] += inside[-1][1] - start_cpu
            g["rss_peak_mb"] += max(s[2] for s in inside) / 2**20
        return out
