"""Scoring a folder of predicted label maps against a folder of references, case by case.

Pairs files by case name, loads each pair, checks that they share a grid, and scores every
structure with :func:`medseg.metrics.surface.mask_metrics`. Nothing here writes files or prints:
``medseg.evaluate`` hands the result to :mod:`medseg.metrics.report`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from medseg.core.errors import MedsegError
from medseg.core.imagefiles import DICOM_SUFFIX, IMAGE_SUFFIXES, case_id
from medseg.data.datalist import label_names as names_from_meta
from medseg.data.readers import LabelMap, read_label_map
from medseg.metrics.medsegbench import Counts, class_counts, dataset_score, score_counts
from medseg.metrics.surface import mask_metrics

Structures = dict[str, list[int]]  # structure name -> label values that make it up (several for regions)


@dataclass
class Scores:
    """Per-case, per-structure metrics of one evaluation."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # {"case", "class", dice, hd95, asd, nsd}
    structures: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "file: reason": left out, exit code 1
    notes: list[str] = field(default_factory=list)  # worth a look, not an error

    counts: dict[str, Counts] = field(default_factory=dict)  # per case, for MedSegBench's Dice

    @property
    def cases(self) -> int:
        return len({r["case"] for r in self.rows})

    def medsegbench(self, num_classes: int | None = None) -> tuple[dict[str, float], float]:
        """MedSegBench's Dice per case and over the dataset (``medseg.metrics.medsegbench``);
        ``num_classes`` (background included) defaults to the largest value found plus one."""
        k = num_classes or max([max(c) for c in self.counts.values() if c] + [1]) + 1
        per_case = {case: score_counts(c, k) for case, c in self.counts.items()}
        return per_case, dataset_score(list(per_case.values()))


def label_files(folder: Path) -> dict[str, Path]:
    """``{case id: file}`` of the label maps in ``folder`` (probability maps and hidden files skipped);
    ``<case>.dcm`` files are DICOM SEGs."""
    if not folder.is_dir():
        raise MedsegError(f"{folder} is not a folder of label maps")
    return {case_id(p): p for p in sorted(folder.iterdir())
            if p.name.lower().endswith((*IMAGE_SUFFIXES, DICOM_SUFFIX)) and not p.name.startswith(".")
            and not case_id(p).endswith("_probabilities")}


def declared_structures(regions: Mapping[Any, Any] | None, labels: Mapping[Any, Any] | None, ref_dir: Path) -> Structures | None:
    """The structures the user named (``regions=``, ``labels=``) or ``dataset.json`` beside the
    references lists; None when nothing declares them (then the label values found are scored)."""
    if regions:
        return {str(k): [int(v) for v in vs] for k, vs in regions.items()}
    if labels:
        return {str(v): [int(k)] for k, v in labels.items() if int(k) != 0}
    meta_path = ref_dir.parent / "dataset.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if "file_ending" in meta:  # nnU-Net v2: {"background": 0, "liver": 1} or region lists {"whole tumor": [1, 2, 3]}
            return {str(k): [int(x) for x in (v if isinstance(v, list) else [v])]
                    for k, v in meta["labels"].items() if k not in ("background", "ignore")}
        names = names_from_meta(meta)
        return {v: [k] for k, v in names.items() if k != 0}
    return None


def score_folders(
    pred_dir: Path,
    ref_dir: Path,
    structures: Structures | None = None,
    nsd_tolerance_mm: float = 1.0,
    on_case: Callable[[str, LabelMap, LabelMap], None] | None = None,
    series_dirs: Sequence[Path] = (),
    medsegbench: bool = False,
) -> Scores:
    """Scores every case present in both folders.

    Args:
        structures: what to score; None scores every nonzero label value found in *any* reference
            or prediction (``label_<v>``): a class missing from some cases is scored on all of them,
            and a value found only in predictions is scored and noted.
        on_case: called with ``(case, prediction image, reference image)`` for each scored case
            (pictures).
        series_dirs: folders holding the source series of DICOM SEG files (besides each SEG's folder).
        medsegbench: also keep per-class pixel counts of each case for MedSegBench's Dice
            (:meth:`Scores.medsegbench`).
    """
    preds, refs = label_files(pred_dir), label_files(ref_dir)
    scores = Scores()
    scores.problems += [f"{refs[c]}: no prediction of case {c} in {pred_dir}" for c in sorted(set(refs) - set(preds))]
    scores.problems += [f"{preds[c]}: no reference in {ref_dir}" for c in sorted(set(preds) - set(refs))]
    found: dict[str, set[int]] = {"ref": set(), "pred": set()}
    per_case: dict[str, dict[int, dict[str, float]]] = {}
    for case in tqdm(sorted(set(preds) & set(refs)), desc="evaluate", unit="case", disable=not sys.stderr.isatty()):
        try:
            ref_map, pred_map = read_label_map(refs[case], series_dirs), read_label_map(preds[case], series_dirs)
        except MedsegError as err:
            scores.problems.append(f"{case}: {err}")
            continue
        ref, pred = ref_map.array, pred_map.array
        if ref.shape != pred.shape or not np.allclose(ref_map.affine, pred_map.affine, atol=1e-3):
            scores.problems.append(f"{preds[case]}: geometry differs from {refs[case]} (shape {pred.shape} vs {ref.shape} "
                                   "or affine); predict in the reference's space")
            continue
        spacing = ref_map.spacing[: ref.ndim]
        if ref.ndim == 3 and ref.shape[2] == 1:  # a 2D image (one slice): surfaces are outlines in the plane
            ref, pred, spacing = ref[..., 0], pred[..., 0], spacing[:2]
        if medsegbench:
            scores.counts[case] = class_counts(pred, ref)
        if structures is not None:
            for name, values in structures.items():
                scores.rows.append({"case": case, "class": name, **mask_metrics(
                    np.isin(pred, values), np.isin(ref, values), spacing, nsd_tolerance_mm)})
        else:
            in_ref, in_pred = set(np.unique(ref).tolist()) - {0}, set(np.unique(pred).tolist()) - {0}
            found["ref"] |= in_ref
            found["pred"] |= in_pred
            per_case[case] = {v: mask_metrics(pred == v, ref == v, spacing, nsd_tolerance_mm) for v in sorted(in_ref | in_pred)}
        if on_case is not None:
            on_case(case, pred_map, ref_map)
    if structures is None:
        values = sorted(found["ref"] | found["pred"])
        both_empty = mask_metrics(np.zeros(1, bool), np.zeros(1, bool), (1.0,))
        scores.rows = [{"case": case, "class": f"label_{v}", **metrics.get(v, both_empty)}
                       for case, metrics in per_case.items() for v in values]
        scores.structures = [f"label_{v}" for v in values]
        only_pred = sorted(found["pred"] - found["ref"])
        if only_pred:
            scores.notes.append(f"label value(s) {only_pred} appear only in predictions, in no reference of {ref_dir}: "
                                "scored (Dice 0 where predicted); pass labels= or regions= if that is not intended")
    else:
        scores.structures = list(structures)
    return scores
