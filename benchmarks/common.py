"""Shared helpers for the benchmark scripts: timing, machine description, result tables."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line naming the hardware the numbers came from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, {datetime.date.today()}"


def median_time(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_table(name: str, headers: list[str], rows: list[list[object]], note: str = "") -> str:
    """Prints a markdown table and writes it (and a CSV) to benchmarks/results/<name>.{md,csv}."""
    RESULTS.mkdir(exist_ok=True)
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines) + (f"\n\n{note}" if note else "") + f"\n\nMachine: {machine()}\n"
    (RESULTS / f"{name}.md").write_text(text)
    with open(RESULTS / f"{name}.csv", "w") as f:
        f.write(",".join(headers) + "\n")
        f.writelines(",".join(fmt(v) for v in row) + "\n" for row in rows)
    print(text)
    return text
