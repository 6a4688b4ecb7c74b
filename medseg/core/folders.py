"""Output folders checked before any work: a folder that cannot be written is one line at the
start, not a traceback after an hour of training or predicting."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medseg.core.errors import MedsegError

log = logging.getLogger(__name__)


def ensure_writable(folder: str | Path, fix: str) -> Path:
    """Creates ``folder`` and proves a file can be written there.

    Args:
        fix: what the user should change, e.g. ``choose another output=``.

    Raises:
        MedsegError: naming the folder, the reason and ``fix``.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".medseg_write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise MedsegError(f"{folder} is not writable ({err.strerror or type(err).__name__}); {fix}") from err
    return folder


def writable(folder: str | Path) -> bool:
    """Whether medseg may create files in ``folder``: its permission bits allow writing, and a
    probe file can really be created (tried, not guessed: an immutable folder or a read-only mount
    refuses even root). Bits without any write permission count as "read-only" even for root,
    who could write there: the owner said not to."""
    folder = Path(folder)
    try:
        if not folder.stat().st_mode & 0o222:
            return False
    except OSError:
        return False
    probe = folder / f".medseg_write_test_{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


_reported: set[Path] = set()


def beside_data(task_dir: str | Path, cache_dir: str | Path, name: str) -> Path:
    """Where medseg keeps what it derives from a dataset (split, fingerprint, plan): the data folder
    itself, or ``<cache_dir>/<name>/`` when the data folder cannot be written (cluster storage,
    a shared read-only copy). The fallback is logged once per folder."""
    task_dir = Path(task_dir)
    if writable(task_dir):
        return task_dir
    fallback = Path(cache_dir) / name
    existing = next(p for p in (fallback, *fallback.parents) if p.exists())
    if not writable(existing):  # e.g. the default cache_dir inside the same read-only data tree
        raise MedsegError(f"data folder {task_dir} is read-only and so is {existing} (paths.cache_dir={cache_dir}): "
                          "set paths.cache_dir=<a writable folder> (or MEDSEG_CACHE) for its split, fingerprint and plan")
    ensure_writable(fallback, "set paths.cache_dir (or MEDSEG_CACHE) to a writable folder")
    if task_dir not in _reported:
        _reported.add(task_dir)
        log.info("data folder %s is read-only: its split, fingerprint and plan are kept in %s", task_dir, fallback)
    return fallback
