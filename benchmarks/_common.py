"""Memory measurements shared by the benchmarks (Linux ``/proc``): a process's resident set, its peak (``VmHWM``)
and the reset of that peak, a sampling thread for the peak of one block of code, and running one setup in a child
process.

Each benchmark imports it as ``from _common import ...`` (run as ``python benchmarks/bench_x.py``, the script's
folder is first on ``sys.path``).
"""

from __future__ import annotations

import resource
import threading
from pathlib import Path


def machine() -> str:
    """The CPU model, its logical CPUs and torch's threads, for the first line of a benchmark (ratios between two
    setups shift with the CPU model, as the share of the work in large matrix products does)."""
    import torch

    from babelscope.runs import machine as describe

    m = describe()
    return (f"machine: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {torch.__version__} on "
            f"{m['torch_threads']} threads")


def status_bytes(field: str) -> int:
    """A size field of ``/proc/self/status`` in bytes: ``VmRSS`` (resident now), ``VmHWM`` (its peak); 0 if absent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    """Reset ``VmHWM`` to the current resident set (Linux), so the next peak is that of the work that follows."""
    Path("/proc/self/clear_refs").write_text("5")


def rss() -> int:
    """This process's resident set size in bytes (``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


class PeakRss:
    """``with PeakRss() as mem:`` samples this process's resident set size every 5 ms in a thread; ``mem.base`` is
    the size on entry, ``mem.peak`` the largest seen (including on exit)."""

    def __enter__(self) -> PeakRss:
        self.base = self.peak = rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss())
            self.stop.wait(0.005)

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, rss())


def run_child(cmd: list[str]) -> dict:
    """Run a child process of a benchmark (one setup, measured alone) and return the JSON object of the last line
    it printed; a failed child ends the benchmark with the end of its error output."""
    import json
    import subprocess

    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[1:3])} ... failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
