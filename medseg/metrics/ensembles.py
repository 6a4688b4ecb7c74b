"""Choosing a configuration, or an ensemble of two, from cross-validation results (nnU-Net's
``nnUNetv2_find_best_configuration``, on medseg's run folders).

Each fold run of a sweep trained with ``trainer.export_validation=true`` keeps, in
``validation/``, the class probabilities of its held-out cases in their own input grid (what
``medseg.predict`` would compute for them) and ``cases.json`` naming each case's reference label
map. Every setting of the sweep (``dataset.configuration=2d`` vs ``3d``, or two models) is scored
from those files by one function, and so is every pair of settings, by averaging their
probabilities case by case, as ``medseg.predict`` averages an ensemble. The best mean foreground
Dice over all held-out cases of all folds wins; a tie keeps the single setting (cheaper to run).
Everything is read from the files, so the choice is reproducible from the fold results alone.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medseg.core.errors import MedsegError
from medseg.data.readers import read_label_map

VALIDATION_DIR = "validation"
CASES_FILE = "cases.json"


def save_validation_case(run_dir: Path, case: str, probabilities: np.ndarray, label: str) -> Path:
    """``validation/<case>.npz`` (``(X, Y, Z, C)`` float16 probabilities, the input grid) and the
    case's reference in ``cases.json``; written to temporary names, then renamed."""
    folder = run_dir / VALIDATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case}.npz"
    tmp = folder / f".{case}.tmp.npz"
    np.savez_compressed(tmp, probabilities=probabilities.astype(np.float16))
    tmp.replace(path)
    index_file = folder / CASES_FILE
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    index[case] = {"label": str(label)}
    tmp_index = folder / f".{CASES_FILE}.tmp"
    tmp_index.write_text(json.dumps(index, indent=1))
    tmp_index.replace(index_file)
    return path


def _cases(run: Path) -> dict[str, str]:
    index = run / VALIDATION_DIR / CASES_FILE
    if not index.is_file():
        raise MedsegError(f"{run} has no {VALIDATION_DIR}/{CASES_FILE}: train the folds with trainer.export_validation=true "
                          "(make cv does) to compare configurations and ensembles")
    return {case: entry["label"] for case, entry in json.loads(index.read_text()).items()}


def foreground_dice(labels: np.ndarray, reference: np.ndarray, classes: Sequence[int]) -> float:
    """Mean over foreground classes of the Dice of one case (a class absent from both counts 1)."""
    scores = []
    for c in classes:
        p, r = labels == c, reference == c
        total = int(p.sum()) + int(r.sum())
        scores.append(1.0 if total == 0 else 2.0 * int(np.logical_and(p, r).sum()) / total)
    return float(np.mean(scores))


def _probabilities(run: Path, case: str) -> np.ndarray:
    with np.load(run / VALIDATION_DIR / f"{case}.npz") as data:
        return data["probabilities"].astype(np.float32)


def score_settings(settings: dict[str, list[Path]], ensembles: bool = True) -> list[dict[str, Any]]:
    """Mean foreground Dice of each setting and of each pair of settings, over every held-out case.

    Args:
        settings: ``{setting: [fold run folders]}``; every setting must cover the same cases.

    Returns:
        ``[{"members": [setting, ...], "dice": mean, "cases": n}]``, best first (ties: fewer members).

    Raises:
        MedsegError: a run without exported validation, or settings validated on different cases.
    """
    per_setting: dict[str, dict[str, tuple[Path, str]]] = {}
    for name, runs in settings.items():
        per_setting[name] = {case: (run, label) for run in runs for case, label in _cases(run).items()}
    names = list(per_setting)
    cases = sorted(per_setting[names[0]])
    for name in names[1:]:
        if sorted(per_setting[name]) != cases:
            raise MedsegError(f"settings '{names[0]}' and '{name}' were validated on different cases; "
                              "compare runs of the same folds")
    candidates = [(n,) for n in names] + (list(itertools.combinations(names, 2)) if ensembles else [])
    totals = {c: [] for c in candidates}
    for case in cases:
        reference = read_label_map(per_setting[names[0]][case][1]).array
        probabilities = {n: _probabilities(per_setting[n][case][0], case) for n in names}
        classes = list(range(1, next(iter(probabilities.values())).shape[-1]))
        for candidate in candidates:
            mean = np.mean([probabilities[n] for n in candidate], axis=0)
            labels = np.argmax(mean, axis=-1)
            if labels.shape != reference.shape:
                raise MedsegError(f"{per_setting[candidate[0]][case][0]}: validation probabilities of {case} are not on "
                                  f"its reference's grid ({labels.shape} vs {reference.shape})")
            totals[candidate].append(foreground_dice(labels, reference, classes))
    results = [{"members": list(c), "dice": float(np.mean(v)), "cases": len(v)} for c, v in totals.items()]
    return sorted(results, key=lambda r: (-round(r["dice"], 6), len(r["members"])))
