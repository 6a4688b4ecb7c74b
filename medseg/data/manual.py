"""Datasets behind a registration wall (AMOS 2022, BraTS): how to get them, checking what the user
put on disk, and turning a verified copy into medseg's datalist format.

Verification reports every problem as one line naming the file, so a user can fix a broken copy
file by file instead of discovering it mid-training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    from medseg.data.datalist import Datalist

AMOS_INSTRUCTIONS = """AMOS 2022 (500 CT + 100 MRI abdominal scans, 15 organs; licence CC BY 4.0) needs a free registration:
  1. Register at the AMOS 2022 challenge site (amos22.grand-challenge.org) and download amos22.zip (about 23 GB)
     from the data page (Zenodo record 7262581).
  2. Unzip it so that <data_dir>/amos22/ holds imagesTr/ labelsTr/ imagesVa/ labelsVa/ imagesTs/.
  3. Check the copy:   python scripts/download_data.py --dataset amos --verify data/amos22
  4. Train:            python -m medseg.train dataset=amos            (dataset.modality=ct|mri|both)"""

BRATS_INSTRUCTIONS = """BraTS needs a Synapse account and acceptance of the data use agreement:
  - BraTS 2021 (Task 1): Synapse project syn27046444 -> BraTS2021_Training_Data.tar, cases
    BraTS2021_XXXXX/BraTS2021_XXXXX_{flair,t1,t1ce,t2,seg}.nii.gz, labels 0/1/2/4.
  - BraTS 2023 glioma (GLI): Synapse project syn51156910 -> ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData,
    cases BraTS-GLI-XXXXX-XXX/BraTS-GLI-XXXXX-XXX-{t1c,t1n,t2f,t2w,seg}.nii.gz, labels 0/1/2/3.
  Unpack into <data_dir>/brats/ (one folder per case), then:
    python scripts/download_data.py --dataset brats --verify data/brats
    python -m medseg.train dataset=brats                 (dataset.year=2021 or 2023)"""

AMOS_NAME = re.compile(r"^amos_(\d{4})\.nii\.gz$")
AMOS_SPLITS = {"Tr": 240, "Va": 120, "Ts": 240}  # official release counts, for the summary only
AMOS_LABELS = set(range(16))  # background + 15 organs
AMOS_MRI_FROM = 500  # case ids above 500 are MRI

BRATS_LAYOUTS = {
    2021: {"case": re.compile(r"^BraTS2021_\d{5}$"), "sep": "_",
           "modalities": ("flair", "t1", "t1ce", "t2"), "labels": {0, 1, 2, 4}},
    2023: {"case": re.compile(r"^BraTS-GLI-\d{5}-\d{3}$"), "sep": "-",
           "modalities": ("t1c", "t1n", "t2f", "t2w"), "labels": {0, 1, 2, 3}},
}


@dataclass
class Report:
    """Problems (one line each, naming the file) and a summary of what was found."""

    problems: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_pair(image_path: Path, label_path: Path, allowed: set[int] | None, report: Report) -> None:
    """Readable files, label values allowed, label geometry equal to the image's."""
    try:
        image = nib.load(str(image_path))
        shape, affine = image.shape[:3], image.affine
    except Exception as err:
        report.problems.append(f"{image_path}: unreadable image ({type(err).__name__})")
        return
    try:
        label = nib.load(str(label_path))
        values = set(np.unique(np.asarray(label.dataobj)).astype(int).tolist())
    except Exception as err:
        report.problems.append(f"{label_path}: unreadable label ({type(err).__name__})")
        return
    if label.shape[:3] != shape:
        report.problems.append(f"{label_path}: shape {label.shape[:3]} differs from its image's {shape}")
    elif not np.allclose(label.affine, affine, atol=1e-3):
        report.problems.append(f"{label_path}: affine differs from its image's (resampled or misaligned label?)")
    if allowed is not None and values - allowed:
        report.problems.append(f"{label_path}: unexpected label values {sorted(values - allowed)} (allowed {sorted(allowed)})")


def verify_amos(root: str | Path) -> Report:
    root = Path(root)
    report = Report()
    if not root.is_dir():
        report.problems.append(f"{root}: folder not found")
        return report
    for split, official in AMOS_SPLITS.items():
        images_dir, labels_dir = root / f"images{split}", root / f"labels{split}"
        if not images_dir.is_dir():
            report.problems.append(f"{images_dir}: folder missing")
            continue
        images = sorted(images_dir.iterdir())
        for path in images:
            if not AMOS_NAME.match(path.name):
                report.problems.append(f"{path}: not named amos_XXXX.nii.gz")
        ids = [int(AMOS_NAME.match(p.name).group(1)) for p in images if AMOS_NAME.match(p.name)]
        mri = sum(i > AMOS_MRI_FROM for i in ids)
        report.summary.append(f"images{split}: {len(ids)} scans ({len(ids) - mri} CT, {mri} MRI; official release {official})")
        if split == "Ts":
            continue
        if not labels_dir.is_dir():
            report.problems.append(f"{labels_dir}: folder missing")
            continue
        label_names = {p.name for p in labels_dir.iterdir()}
        for path in images:
            if not AMOS_NAME.match(path.name):
                continue
            if path.name not in label_names:
                report.problems.append(f"{labels_dir / path.name}: label missing for {path}")
            else:
                _check_pair(path, labels_dir / path.name, AMOS_LABELS, report)
        for name in sorted(label_names - {p.name for p in images}):
            report.problems.append(f"{labels_dir / name}: label without an image in {images_dir}")
    return report


def detect_brats_year(root: Path) -> int | None:
    for year, layout in BRATS_LAYOUTS.items():
        if any(layout["case"].match(p.name) for p in root.iterdir() if p.is_dir()):
            return year
    return None


def verify_brats(root: str | Path, year: int | None = None) -> Report:
    root = Path(root)
    report = Report()
    if not root.is_dir():
        report.problems.append(f"{root}: folder not found")
        return report
    year = year or detect_brats_year(root)
    if year is None:
        report.problems.append(f"{root}: no BraTS2021_XXXXX or BraTS-GLI-XXXXX-XXX case folders found")
        return report
    layout = BRATS_LAYOUTS[year]
    cases = sorted(p for p in root.iterdir() if p.is_dir())
    for case in cases:
        if not layout["case"].match(case.name):
            report.problems.append(f"{case}: not a BraTS {year} case folder name")
            continue
        files = {m: case / f"{case.name}{layout['sep']}{m}.nii.gz" for m in (*layout["modalities"], "seg")}
        missing = [m for m, f in files.items() if not f.is_file()]
        for m in missing:
            report.problems.append(f"{files[m]}: missing")
        if "seg" in missing:
            continue
        present = [m for m in layout["modalities"] if m not in missing]
        for i, m in enumerate(present):  # label values once per case, geometry against every modality
            _check_pair(files[m], files["seg"], layout["labels"] if i == 0 else None, report)
    report.summary.append(f"BraTS {year}: {len(cases)} case folders in {root}")
    return report


# --- datalists for training ---------------------------------------------------------------------

def amos_cases(root: str | Path, modality: str = "ct") -> tuple[dict[str, dict], dict[str, dict]]:
    """AMOS training and official validation cases, filtered by modality (``ct``, ``mri``, ``both``)."""
    root = Path(root)
    keep = {"ct": lambda i: i <= AMOS_MRI_FROM, "mri": lambda i: i > AMOS_MRI_FROM, "both": lambda i: True}[modality]

    def split(name: str) -> dict[str, dict]:
        out = {}
        for path in sorted((root / f"images{name}").glob("amos_*.nii.gz")):
            if keep(int(AMOS_NAME.match(path.name).group(1))):
                out[path.name[:-7]] = {"image": str(path), "label": str(root / f"labels{name}" / path.name)}
        return out

    return split("Tr"), split("Va")


def brats_cases(root: str | Path, year: int | None = None) -> dict[str, dict]:
    """BraTS cases with the 4 modalities as a list (stacked as channels by ``LoadImaged``)."""
    root = Path(root)
    year = year or detect_brats_year(root)
    layout = BRATS_LAYOUTS[year]
    cases = {}
    for case in sorted(p for p in root.iterdir() if p.is_dir() and layout["case"].match(p.name)):
        stem = f"{case}/{case.name}{layout['sep']}"
        cases[case.name] = {"image": [f"{stem}{m}.nii.gz" for m in layout["modalities"]], "label": f"{stem}seg.nii.gz"}
    return cases


def amos_datalist(root: str | Path, modality: str, label_names: dict) -> Datalist:
    """AMOS as a datalist: imagesTr for training folds, the official imagesVa for validation."""
    from medseg.data.datalist import Datalist

    train, val = amos_cases(root, modality)
    return Datalist(train, {int(k): v for k, v in label_names.items()}, Path(root), fixed_val=val)


def brats_datalist(root: str | Path, year: int | None, label_names: dict) -> Datalist:
    """BraTS as a datalist: 4 modality files per case, 5 seeded folds."""
    from medseg.data.datalist import Datalist

    return Datalist(brats_cases(root, year), {int(k): v for k, v in label_names.items()}, Path(root))
