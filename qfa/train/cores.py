"""Size torch's intra-op thread pool to the cores other processes leave free.

Why: with every core in the pool, each parallel op ends at a barrier that waits for the slowest
thread. When another process runs on one of the cores and the scheduler does not favour the
trainer (the kernel's autogroups make ``nice`` act only within a session, so a niced job started
from another terminal gets an equal share), the thread that shares that core reaches every
barrier a time slice late, thousands of times a step, and training slows many-fold
(docs/results.md, "Training beside other processes"). A pool of only the free cores has no
such barrier to wait at.

The count changes only when the machine's load does, so a run on an otherwise idle machine keeps
its full pool; for bit-identical results under changing load, fix ``threads`` in the config.
"""
from __future__ import annotations

import os
import time

__all__ = ["CoreShare"]


class CoreShare:
    """Call once a step; every ``every_s`` seconds it measures the CPU that processes other than
    this one and its children used (``psutil``) and sets ``torch.set_num_threads`` to the free
    cores, between 1 and ``max_threads``."""

    def __init__(self, max_threads: int, every_s: float = 5.0) -> None:
        import psutil
        self.max_threads, self.every_s = max_threads, every_s
        self.cores = psutil.cpu_count() or 1
        self._me = psutil.Process(os.getpid())
        self.threads = max_threads
        self._last = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        import psutil
        t = psutil.cpu_times()  # guest time is already inside user and nice: not added again
        busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        mine = 0.0
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                c = p.cpu_times()
                mine += c.user + c.system
            except psutil.Error:  # a child that ended meanwhile
                pass
        return time.monotonic(), busy, mine

    def others(self) -> float | None:
        """Cores used by other processes since the last sample (None until ``every_s`` passed)."""
        if time.monotonic() - self._last[0] < self.every_s:
            return None
        now = self._sample()
        wall = now[0] - self._last[0]
        used = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
        self._last = now
        return used

    def __call__(self) -> int:
        if self.max_threads > 1:
            used = self.others()
            if used is not None:
                want = max(1, min(self.max_threads, int(self.cores - used + 0.5)))
                if want != self.threads:
                    import torch
                    torch.set_num_threads(want)
                    self.threads = want
        return self.threads
