"""Multi-process training under ``torchrun``: process group, rank helpers, shard-and-gather.

``torchrun --standalone --nproc_per_node=N -m medseg.train ...`` starts N copies of the entry
point with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set; :func:`setup` joins them (NCCL on GPUs,
gloo on CPU, so the same code runs in CI). Without those variables everything here is a no-op and
training runs in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from typing import Any, Iterator

import psutil
import torch
import torch.distributed as dist

from medseg.core.utils import select_device

log = logging.getLogger(__name__)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes files (checkpoints, logs, metrics): rank 0, or the only one."""
    return rank() == 0


def rank_from_env() -> int:
    """This process's rank as torchrun set it (valid after the process group is gone)."""
    return int(os.environ.get("RANK", "0"))


def local_world_size() -> int:
    """Processes of this job on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_name: str = "auto") -> torch.device:
    """Joins the torchrun (or multi-task SLURM job) process group, if any; returns this process's device.

    GPUs: one per process (``cuda:LOCAL_RANK``), NCCL. CPU: gloo.
    """
    if os.environ.get("SUBMITIT_EXECUTOR") and not launched_by_torchrun():  # a job of hydra/launcher=slurm
        import submitit
        from submitit.helpers import TorchDistributedEnvironment

        if submitit.JobEnvironment().num_tasks > 1:  # its tasks -> RANK, WORLD_SIZE, MASTER_ADDR, ...
            TorchDistributedEnvironment().export()
    if not launched_by_torchrun():
        return select_device(device_name)
    use_cuda = select_device(device_name).type == "cuda"  # a cuda request without a GPU is one line
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=60))
    # Only rank 0 talks; the others still warn and fail loudly.
    if not is_main():
        logging.getLogger("medseg").setLevel(logging.WARNING)
    log.info("distributed: %d processes (%s backend)", world_size(), dist.get_backend())
    return torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Runs the block on rank 0 first (e.g. generating data, writing splits.json), then on the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_gather(obj: Any) -> list[Any]:
    """``obj`` from every rank, in rank order (a one-element list without torchrun)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool) -> bool:
    """True if ``flag`` is true on any rank, so all ranks take the same branch (e.g. stop on time)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def mean_over_ranks(value: float) -> float:
    return sum(all_gather(value)) / world_size()


def from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (clocks differ between processes; decisions must not)."""
    return all_gather(value)[0] if world_size() > 1 else value


def shard(items: list[Any], even: bool) -> list[Any]:
    """This rank's share of ``items``: interleaved, and padded with repeats when ``even`` so every
    rank runs the same number of steps (training); unpadded for validation, which is gathered.
    Like MONAI's ``partition_dataset``, except that a rank may get nothing (1 validation case,
    2 ranks), which MONAI refuses."""
    n = world_size()
    if n == 1:
        return items
    if even and len(items) % n:
        items = items + items[: n - len(items) % n]
    return items[rank()::n]


def run_name() -> str:
    """Run-folder name shared by all processes of a job (Hydra resolver ``medseg_run_name``).

    One process: the start time. Under torchrun on one node: the start time of the torchrun agent
    (the common parent), so every rank resolves the same folder. Across nodes: the rendezvous id
    (``--rdzv-id``, e.g. the SLURM job id).
    """
    if not launched_by_torchrun():
        started = datetime.datetime.now()
    elif local_world_size() == int(os.environ["WORLD_SIZE"]):
        started = datetime.datetime.fromtimestamp(psutil.Process(os.getppid()).create_time())
    else:
        return f"ddp_{os.environ.get('TORCHELASTIC_RUN_ID', 'none')}"
    return started.strftime("%Y-%m-%d_%H-%M-%S")
