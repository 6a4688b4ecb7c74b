"""Reading every case once before training, so a broken file is named in one line before any
caching or training instead of surfacing as a traceback (or worse, a NaN model) later.

Checks per case: every file readable (not truncated, an image at all), 3D (or 4D channels-last),
the channel count the dataset expects, finite voxels, an image that is not all zero, a label on
the image's grid (shape and affine) holding only the dataset's label values. A clean result is
remembered under ``<paths.cache_dir>/integrity/``, keyed by the files' paths, sizes and
modification times, so a second run on unchanged data skips the reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import nibabel as nib
import numpy as np
from tqdm import tqdm

from medseg.core.errors import MedsegError, user_error_in
from medseg.core.imagefiles import is_image_2d
from medseg.data.images2d import mask_problem
from medseg.data.readers import load_array

log = logging.getLogger(__name__)
T = TypeVar("T")


def _read(path: str, kind: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Voxels and voxel-to-world affine of one file (nibabel for NIfTI, medseg's readers otherwise)."""
    if path.endswith((".nii", ".nii.gz")):
        img = nib.load(path)
        return np.asanyarray(img.dataobj), np.asarray(img.affine)
    return load_array(path, kind)


def _describe_error(err: BaseException) -> str:
    user = user_error_in(err)
    return str(user) if user is not None else ""


def _describe(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text[:100]}" if text else type(err).__name__


@dataclass
class CaseVoxels:
    """One case as read by the check: its problems, and the voxels for whoever needs them next
    (the fingerprint computes its statistics from the same read that checks the case)."""

    problems: list[str]
    channels: list[np.ndarray] = field(default_factory=list)  # one 3D array per channel
    label: np.ndarray | None = None
    affine: np.ndarray | None = None


def check_case(case: dict[str, Any], in_channels: int, label_values: set[int] | None) -> list[str]:
    """Problems of one case as ``"<file>: <what is wrong>; <the fix>"`` lines (empty if none)."""
    return read_case(case, in_channels, label_values).problems


def read_case(case: dict[str, Any], in_channels: int, label_values: set[int] | None) -> CaseVoxels:
    """Reads one case's files and checks them (see the module docstring for what is checked)."""
    images = [case["image"]] if isinstance(case["image"], str) else list(case["image"])
    problems, channels, grid = [], 0, None
    read = CaseVoxels(problems)
    for path in images:
        try:
            data, affine = _read(path)
        except Exception as err:  # readers raise many types for truncated or foreign files
            problems.append(_describe_error(err) or f"{path}: cannot be read as an image ({_describe(err)}); "
                            "re-download or re-export it")
            continue
        if data.ndim not in (3, 4):
            problems.append(f"{path}: is {data.ndim}D (shape {tuple(data.shape)}) but training expects 3D volumes "
                            "(4D: channels last); convert it or leave the case out")
            continue
        channels += 1 if data.ndim == 3 else data.shape[3]
        read.channels += [data] if data.ndim == 3 else [data[..., c] for c in range(data.shape[3])]
        grid = grid or (data.shape[:3], affine)
        read.affine = grid[1]
        if data.size == 0 or not np.any(data):
            problems.append(f"{path}: is empty (every voxel is 0); re-export it or leave the case out")
        elif np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            bad = int(np.size(data) - np.isfinite(data).sum())
            problems.append(f"{path}: has {bad} NaN/Inf voxel(s); fix the file (e.g. replace them with the background "
                            "value) or leave the case out")
    if channels == 1 and in_channels > 1 and all(is_image_2d(p) for p in images):
        channels = in_channels  # a grey picture in a colour set: the loader repeats it (Image2DReader)
    if grid is not None and not problems and channels != in_channels:
        problems.append(f"{images[0]}: has {channels} channel(s) but the dataset expects {in_channels} "
                        "(dataset.in_channels); give one file per channel or a 4D file")
    label = case.get("label")
    if label is None or grid is None:
        return read
    try:
        labels, label_affine = _read(label, "mask")
    except Exception as err:
        problems.append(_describe_error(err) or f"{label}: cannot be read as a label map ({_describe(err)}); "
                        "re-download or re-export it")
        return read
    read.label = labels
    if labels.shape[:3] != grid[0] or labels.ndim != 3:
        problems.append(f"{label}: shape {tuple(labels.shape)} differs from its image {images[0]} {tuple(grid[0])}; "
                        "resample the label onto the image's grid")
    elif not np.allclose(label_affine, grid[1], rtol=1e-3, atol=1e-2):
        problems.append(f"{label}: affine (orientation/spacing/origin) differs from its image {images[0]}; "
                        "resample the label onto the image's grid")
    if label_values is not None and is_image_2d(label):  # 2D masks (0/255 ones already read as 0/1)
        problem = mask_problem(labels, len(label_values), label)
        if problem:
            problems.append(problem)
    elif label_values is not None:
        values = np.unique(labels)
        if not np.allclose(values, np.round(values)):
            problems.append(f"{label}: holds non-integer values ({values[~np.isclose(values, np.round(values))][:3]}); "
                            "a label map holds class indices")
        else:
            extra = sorted(set(np.round(values).astype(int).tolist()) - label_values)
            if extra:
                problems.append(f"{label}: holds label value(s) {extra} outside the dataset's labels {sorted(label_values)}; "
                                "fix the file or the labels in dataset.json")
    return read


def files_key(cases: Sequence[dict[str, Any]], *settings: Any) -> str:
    """A short hash of the cases' files (paths, sizes, modification times) and ``settings``: what a
    result derived from reading them (a clean check, a fingerprint) is remembered by."""
    files = sorted({f for c in cases for v in c.values() for f in ([v] if isinstance(v, str) else v)
                    if isinstance(f, str) and os.path.isfile(f)})
    stats = [(f, st.st_size, st.st_mtime_ns) for f, st in zip(files, map(os.stat, files))]
    return hashlib.sha256(json.dumps([stats, *settings]).encode()).hexdigest()[:20]


def map_cases(fn: Callable[[Any], T], items: Sequence[Any], desc: str, workers: int = 4) -> list[T]:
    """``fn`` over ``items`` in threads (file reads release the GIL), in order, with a progress bar."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="case",
                         disable=not sys.stderr.isatty()))


def refuse(problems: Sequence[str]) -> None:
    """Logs every problem line and raises the first as a one-line error (none: returns)."""
    for line in problems:
        log.error("%s", line)
    if problems:
        more = f" ({len(problems) - 1} more problem(s) logged above)" if len(problems) > 1 else ""
        raise MedsegError(problems[0] + more)


def check_cases(cases: Sequence[dict[str, Any]], in_channels: int, label_values: Iterable[int] | None,
                record_dir: str | Path | None = None, workers: int = 4) -> None:
    """Reads every case once (in threads, with a progress bar) and refuses the data if any is broken.

    Args:
        cases: ``{"image": path or [paths], "label": path, "case": id}`` dicts.
        in_channels: channels the network takes.
        label_values: values a label map may hold (background included); None skips that check.
        record_dir: where a clean result is remembered (skipped on the next run with unchanged files).

    Raises:
        MedsegError: one line naming the first broken file; every problem is logged above it.
    """
    allowed = set(int(v) for v in label_values) if label_values is not None else None
    key = files_key(cases, in_channels, sorted(allowed) if allowed else None)
    record = Path(record_dir) / f"{key}.ok" if record_dir else None
    if record is not None and record.is_file():
        return
    results = map_cases(lambda c: check_case(c, in_channels, allowed), cases, "checking cases", workers)
    refuse([p for r in results for p in r])
    log.info("checked %d case(s): readable, finite, on matching grids", len(cases))
    if record is not None:
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"cases": len(cases)}))
        except OSError:
            pass  # nowhere to remember it: the check simply runs again next time
