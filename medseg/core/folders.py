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


class FolderClaim:
    """An exclusive claim on a folder for as long as this process holds it: ``fcntl.flock`` on
    ``<folder>/.medseg.lock``, taken before anything is written there.

    Checking "does the folder already hold checkpoints?" and then writing is a race: two jobs
    started together (a SLURM array, a resubmitted job) both pass the check and overwrite each
    other. A lock taken with ``LOCK_NB`` admits exactly one of them; the kernel releases it when
    the holder exits, even on SIGKILL, so a killed run can be resumed at once.
    """

    LOCK_FILE = ".medseg.lock"

    def __init__(self, folder: str | Path, purpose: str):
        import fcntl
        import socket
        import time

        self.folder = Path(folder)
        self.path = self.folder / self.LOCK_FILE
        self._fd: int | None = None
        for _ in range(100):  # the file may be unlinked by a holder releasing it between open and lock: retry
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise MedsegError(f"{self.folder} is in use by {holder}: wait for it to finish, or choose another "
                                  f"folder (two {purpose} runs in one folder would overwrite each other)") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                break
            os.close(fd)
        if self._fd is None:
            raise MedsegError(f"{self.path} keeps changing; another process is claiming {self.folder}: choose another folder")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"medseg {purpose} pid {os.getpid()} on {socket.gethostname()} since "
                            f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0)

    def release(self) -> None:
        """Removes the lock file while still holding it, then lets go: a process that opened the file
        just before sees, after locking it, that it is no longer the folder's lock file, and retries."""
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> FolderClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def claim_folder(folder: str | Path, purpose: str, fix: str) -> FolderClaim:
    """Makes ``folder`` (writable, or one line naming ``fix``) and claims it for this process.

    Raises:
        MedsegError: the folder cannot be written, or another medseg process holds it.
    """
    ensure_writable(folder, fix)
    return FolderClaim(folder, purpose)
