"""The dataset fingerprint: what the recipe is planned from (spacings, shapes, intensities, classes).

Every labelled case is read once, in threads with a progress bar, through the same reader and
checks as the integrity check (``medseg.data.integrity.read_case``), so a broken case is named in
one line before anything is planned or trained. The result is kept as JSON, keyed by the files'
paths, sizes and modification times: an unchanged dataset is fingerprinted once, a changed one
again.

MONAI's ``DataAnalyzer`` (Auto3DSeg) computes a superset of these statistics, but it reads every
case through a full MONAI transform chain and writes a large YAML report; the planning rules need
a dozen numbers per case, from the same read that checks the case.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from medseg.data.integrity import files_key, map_cases, read_case, refuse

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "medseg_fingerprint.json"
SAMPLES_PER_CASE = 10_000  # foreground voxels per case and channel kept for the intensity statistics
FORMAT = 3


def spacing_of(affine: np.ndarray) -> list[float]:
    """Voxel size (mm) along the array axes, from the voxel-to-world affine."""
    return [float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))]


def nonzero_box(channels: Sequence[np.ndarray]) -> list[int]:
    """Shape of the box around the voxels that are nonzero in any channel (the crop training uses)."""
    mask = np.zeros(channels[0].shape, bool)
    for c in channels:
        mask |= np.nan_to_num(c) != 0
    if not mask.any():
        return list(mask.shape)
    return [int(idx.max() - idx.min() + 1) for idx in np.nonzero(mask)]


def class_centroids(label: np.ndarray, affine: np.ndarray) -> dict[str, list[float]]:
    """World (RAS mm) centre of each foreground class present: the axes training mirrors along are
    the RAS axes (images are reoriented before caching), so positions are compared in world space."""
    centroids = {}
    for value in np.unique(label):
        if value <= 0:
            continue
        mask = label == value
        total = mask.sum()
        voxel = [float((mask.sum(axis=tuple(a for a in range(3) if a != axis)) * np.arange(mask.shape[axis])).sum() / total)
                 for axis in range(3)]
        world = np.asarray(affine)[:3, :3] @ np.asarray(voxel) + np.asarray(affine)[:3, 3]
        centroids[str(int(value))] = [round(float(w), 2) for w in world]
    return centroids


def case_fingerprint(case: dict[str, Any], in_channels: int, label_values: set[int] | None,
                     seed: int = 0) -> tuple[dict[str, Any], list[str], list[np.ndarray]]:
    """Statistics of one case, its problems (one line each) and its foreground intensity samples."""
    read = read_case(case, in_channels, label_values)
    if read.problems or read.label is None:
        return {}, read.problems or [f"{case['label']}: no label map read"], []
    label = np.round(read.label).astype(np.int64)
    foreground = label > 0
    rng = np.random.default_rng(seed)
    samples = []
    for channel in read.channels:
        values = np.asarray(channel[foreground], dtype=np.float32)
        if values.size > SAMPLES_PER_CASE:
            values = rng.choice(values, SAMPLES_PER_CASE, replace=False)
        samples.append(values)
    counts = np.bincount(np.clip(label, 0, None).ravel(), minlength=max(label_values or {0}) + 1 if label_values else 0)
    # Along the RAS axes, as training sees the image after reorienting (Orientationd) before resampling
    to_ras = nib.io_orientation(read.affine)[:, 0].astype(int)

    def ras(values: Sequence[Any]) -> list[Any]:
        out = [None] * 3
        for axis, value in zip(to_ras, values):
            out[axis] = value
        return out

    stats = {
        "case": case.get("case"),
        "spacing": ras(spacing_of(read.affine)),
        "shape": ras(list(label.shape)),
        "cropped_shape": ras(nonzero_box(read.channels)),
        "channels": len(read.channels),
        "class_voxels": {str(v): int(n) for v, n in enumerate(counts) if n or (label_values and v in label_values)},
        "class_centroids": class_centroids(label, read.affine),
    }
    return stats, [], samples


def _intensity(samples: list[np.ndarray]) -> dict[str, float]:
    values = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    if values.size == 0:  # no case has foreground voxels: nothing to learn a scale from
        values = np.zeros(1, np.float32)
    return {"mean": float(values.mean()), "std": float(values.std()),
            "percentile_00_5": float(np.percentile(values, 0.5)), "percentile_99_5": float(np.percentile(values, 99.5)),
            "min": float(values.min()), "max": float(values.max())}


def compute_fingerprint(cases: Sequence[dict[str, Any]], in_channels: int, label_values: set[int] | None,
                        workers: int = 4) -> dict[str, Any]:
    """Reads every case (threads, progress bar) and summarises what planning needs.

    Raises:
        MedsegError: a case is broken (shape/affine disagreement, a label value outside the
            dataset's labels, NaN voxels, unreadable...): the first is named in one line.
    """
    def one(i_case: tuple[int, dict[str, Any]]) -> tuple[dict[str, Any], list[str], list[np.ndarray]]:
        return case_fingerprint(i_case[1], in_channels, label_values, seed=i_case[0])

    results = map_cases(one, list(enumerate(cases)), "fingerprinting", workers)
    refuse([p for _, lines, _ in results for p in lines])
    per_case = [stats for stats, _, _ in results]
    n_channels = per_case[0]["channels"]
    intensity = [_intensity([s[c] for _, _, s in results]) for c in range(n_channels)]
    presence: dict[str, int] = {}
    voxels: dict[str, int] = {}
    for stats in per_case:
        for value, n in stats["class_voxels"].items():
            presence[value] = presence.get(value, 0) + int(n > 0)
            voxels[value] = voxels.get(value, 0) + n
    total = max(sum(voxels.values()), 1)
    return {
        "format": FORMAT,
        "cases": len(per_case),
        "channels": n_channels,
        "median_spacing": np.median([s["spacing"] for s in per_case], 0).tolist(),
        "median_shape": np.median([s["shape"] for s in per_case], 0).tolist(),
        "median_cropped_shape": np.median([s["cropped_shape"] for s in per_case], 0).tolist(),
        "foreground_intensity": intensity,  # per channel, over voxels labelled non-background
        "class_fraction": {v: n / total for v, n in sorted(voxels.items(), key=lambda kv: int(kv[0]))},
        "class_presence": {v: n / len(per_case) for v, n in sorted(presence.items(), key=lambda kv: int(kv[0]))},
        "per_case": per_case,
    }


def load_or_compute(cases: Sequence[dict[str, Any]], in_channels: int, label_values: set[int] | None,
                    path: Path, workers: int = 4) -> dict[str, Any]:
    """The fingerprint saved at ``path`` if it was made from these exact files, else a new one
    (saved there: written to a temporary file, then renamed)."""
    key = files_key(cases, FORMAT)
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            if isinstance(saved, dict) and saved.get("key") == key and isinstance(saved.get("per_case"), list):
                log.info("fingerprint of %d cases: %s", len(cases), path)
                return saved
        except (OSError, json.JSONDecodeError):
            pass  # unreadable or half-written by someone else: recompute
        log.info("%s was made from other files: fingerprinting again", path)
    fingerprint = {"key": key, **compute_fingerprint(cases, in_channels, label_values, workers)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(fingerprint, indent=1))
    tmp.replace(path)
    log.info("fingerprinted %d cases: %s", len(cases), path)
    return fingerprint
