"""How many threads medseg's processes use, decided from the cores they may actually use.

A PyTorch process takes every core it sees for its OpenMP pool. On a shared machine (a SLURM node,
several DDP ranks on one host, a notebook beside a training run) two such pools fight, and each
small tensor op of the data transforms (flip, stack, copy) waits for threads another process
holds: measured on 2 cores, a training loader fell from ~55 to ~2.4 batches/s beside one busy
neighbour. So: the model gets the cores this process may use (affinity, cgroup quota, SLURM,
divided among torchrun's local ranks), and per-sample transforms run on one thread
(:func:`single_threaded`), as DataLoader workers already do.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import torch

from medseg.core.errors import MedsegError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _cgroup_cpus() -> float | None:
    """CPUs allowed by a cgroup quota (containers, SLURM's cgroup plugin), if there is one."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            if period_file is None:
                quota, period = Path(quota_file).read_text().split()[:2]
            else:
                quota, period = Path(quota_file).read_text().strip(), Path(period_file).read_text().strip()
            if quota not in ("max", "-1") and int(period) > 0:
                return int(quota) / int(period)
        except (OSError, ValueError):
            continue
    return None


def usable_cores() -> int:
    """Cores this process may use: CPU affinity, a cgroup CPU quota, ``SLURM_CPUS_PER_TASK``, shared
    among the ``LOCAL_WORLD_SIZE`` processes torchrun started on this machine."""
    limits = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)]
    quota = _cgroup_cpus()
    if quota:
        limits.append(max(1, math.floor(quota)))
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        limits.append(int(os.environ["SLURM_CPUS_PER_TASK"]))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if os.environ.get("LOCAL_WORLD_SIZE", "").isdigit() else 1
    return max(1, min(limits) // max(local, 1))


def apply_thread_policy(threads: int | str | None = "auto") -> int:
    """Sets torch's intra-op threads (``trainer.threads``: ``auto`` or a number, which wins) and
    logs the choice once; returns it."""
    try:
        n = usable_cores() if threads in (None, "auto") else int(threads)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise MedsegError(f"trainer.threads={threads!r} must be auto or a whole number >= 1")
    torch.set_num_threads(n)
    log.info("threads: %d for the network (%s); data transforms run on 1", n,
             "trainer.threads" if threads not in (None, "auto") else
             f"{usable_cores()} usable cores of {os.cpu_count()}")
    return n


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Runs the block with torch on one thread, then restores the previous count."""
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def single_threaded(batches: Iterable[T]) -> Iterator[T]:
    """Iterates a loader with each batch fetched on one thread: in-process transforms then never
    wait on OpenMP threads another process holds, and the model keeps its threads in between."""
    iterator = iter(batches)
    while True:
        with one_thread():
            try:
                batch = next(iterator)
            except StopIteration:
                return
        yield batch
