"""Thread policy: the cores a process may use, an explicit setting winning, one-thread data fetching."""

from __future__ import annotations

import os

import pytest
import torch

from medseg.core.errors import MedsegError
from medseg.core.threads import (
    apply_thread_policy,
    one_thread,
    single_threaded,
    usable_cores,
)


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_usable_cores_follow_affinity_slurm_and_local_ranks(monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cores = usable_cores()
    assert 1 <= cores <= len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert usable_cores() == 1
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * cores))  # more local ranks than cores: still one each
    assert usable_cores() == 1


def test_explicit_threads_win_and_bad_values_are_one_line():
    assert apply_thread_policy(1) == 1 and torch.get_num_threads() == 1
    assert apply_thread_policy("auto") == usable_cores() == torch.get_num_threads()
    for bad in ("abc", 0):
        with pytest.raises(MedsegError, match="trainer.threads"):
            apply_thread_policy(bad)


def test_batches_are_fetched_on_one_thread_and_the_model_keeps_its_threads():
    torch.set_num_threads(2)
    seen = []

    def loader():
        for i in range(3):
            seen.append(torch.get_num_threads())
            yield i

    out = []
    for item in single_threaded(loader()):
        out.append((item, torch.get_num_threads()))
    assert out == [(0, 2), (1, 2), (2, 2)] and seen == [1, 1, 1]
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
