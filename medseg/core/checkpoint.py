"""Checkpoints that are never half-written and load without unpickling arbitrary objects."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from medseg.core.errors import MedsegError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Writes ``state`` to a temporary file beside ``path``, fsyncs it, then renames it into place.

    A process killed at any moment leaves either the previous checkpoint or the new one, never a
    truncated file. ``state`` must hold only tensors and plain Python containers/scalars so that
    :func:`load_checkpoint` can read it with ``weights_only=True``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a medseg checkpoint safely (``weights_only=True``).

    Raises:
        MedsegError: the file is missing or not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MedsegError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise MedsegError(f"{path} is not a readable medseg checkpoint ({type(err).__name__}); point to best.pt or last.pt of a run") from err
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise MedsegError(f"{path} is not a medseg checkpoint (no 'model' entry)")
    return state


def require_finite_weights(state: dict[str, Any], path: str | Path) -> None:
    """Refuses a checkpoint whose network holds NaN/Inf: it would predict garbage (all background)
    with exit code 0, or export it.

    Raises:
        MedsegError: naming the file and the first non-finite tensor.
    """
    bad = [name for name, tensor in state["model"].items()
           if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise MedsegError(f"{path}: weight tensor '{bad[0]}' holds NaN/Inf ({len(bad)} tensor(s) non-finite); "
                          "this model cannot be used: take another checkpoint (e.g. an earlier best.pt)")
