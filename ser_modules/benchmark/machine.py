"""The machine's limits and the measurement helpers of the benchmark: the GEMM rate, which GRU
kernel runs, and peak memory (of a step, or of a process tree).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------
# Machine limits and measurement helpers


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_rate(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int | None = None,
              seconds: float = 1.0) -> float:
    """GFLOP/s of ``n x n`` matrix products (1024 on CPU, 4096 on GPU) over ``seconds``: the median
    of five windows, like the training steps' median pass."""
    n = n or (4096 if device.startswith("cuda") else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    rates = []
    for _ in range(5):
        started, iters = time.perf_counter(), 0
        while time.perf_counter() - started < seconds / 5:
            a @ b
            iters += 1
            if device.startswith("cuda") and iters % 10 == 0:
                synchronize(device)
        synchronize(device)
        rates.append(2 * n**3 * iters / (time.perf_counter() - started) / 1e9)
    return float(np.median(rates))


def gru_kernel_name(device: str) -> str:
    """What runs the GRU layers on ``device``: the grouped kernel, ``nn.GRU`` (switched off or not
    buildable) or cuDNN."""
    from ser_modules.models import grouped_gru

    if device.startswith("cuda"):
        return "cuDNN (packed sequences)"
    return "grouped CPU kernel" if grouped_gru.usable(torch.zeros(1)) else "nn.GRU"


def _proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process from /proc (empty where /proc is missing)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class PeakMemory:
    """Peak memory of a block, in MB above the memory in use when it started.

    CPU: the process's high-water RSS, reset through ``/proc/self/clear_refs`` (Linux) after
    returning freed heap to the system; GPU: ``torch.cuda.max_memory_allocated``.
    """

    def __init__(self, device: str):
        self.device, self.mb = device, float("nan")

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            pass
        self.start = _proc_status().get("VmRSS", 0)
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            self.mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        else:
            status = _proc_status()
            if "VmHWM" in status:
                self.mb = (status["VmHWM"] - self.start) / 1024
        return False


class TreeMemoryMonitor(threading.Thread):
    """Peak summed RSS (MB) of a process and all its descendants, sampled every ``interval`` s."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_mb, self._stop_event = pid, interval, 0.0, threading.Event()

    def _tree(self) -> list[int]:
        pids, queue = [], [self.pid]
        while queue:
            pid = queue.pop()
            pids.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as f:
                        queue += [int(c) for c in f.read().split()]
            except OSError:
                continue
        return pids

    def run(self):
        while not self._stop_event.is_set():
            rss = sum(_proc_status(p).get("VmRSS", 0) for p in self._tree())
            self.peak_mb = max(self.peak_mb, rss / 1024)
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak_mb
