"""Output folders checked before any work: a folder that cannot be written is one line at the
start, not a traceback after an hour of training or predicting."""

from __future__ import annotations

from pathlib import Path

from medseg.core.errors import MedsegError


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
