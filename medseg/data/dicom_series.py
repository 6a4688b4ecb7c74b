"""DICOM image series in a folder: grouped by SeriesInstanceUID, checked, put in volume order.

Only headers are read here (pydicom); the pixels are ITK's job (:mod:`medseg.data.dicom_reader`). A
series that cannot be one regular stack of slices (a slice missing, uneven steps, two images at one
position, several orientations, gantry tilt, a multi-frame object) is refused in one line naming the
folder and the fix: read as one volume anyway, it would be silently distorted.

A folder may hold several series. ``<folder>#series=<SeriesInstanceUID>`` names one of them
wherever a path to a scan is expected (input discovery makes these for such folders); a plain folder
must hold exactly one image series. Objects that are not images (SEG, RTSTRUCT, SR, ...) are ignored.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medseg.core.errors import MedsegError

SERIES_MARK = "#series="  # <folder>#series=<SeriesInstanceUID>: one series of a folder that holds several
STEP_TOLERANCE = 0.01  # relative: slice steps within 1 % of the median step are regular (highdicom's default)
ORIENTATION_TOLERANCE = 1e-4  # direction cosines of one orientation agree to this
TILT_TOLERANCE = 0.1  # pixels: how far the last slice may sit sideways of the first one's normal (gantry tilt)


@dataclass(frozen=True)
class Series:
    """One image series, checked and in volume order (the reader's third axis)."""

    folder: Path
    uid: str
    number: int | None
    files: tuple[Path, ...]  # volume order: acquisition (InstanceNumber) order where it is monotonic
    headers: tuple[Dataset, ...]  # same order, read without pixels
    along_normal: bool  # the files run along the slice normal (row x column), the order ITK reads in

    @property
    def source(self) -> str:
        """The string that names this series to the reader (and in messages)."""
        return series_source(self.folder, self.uid)

    @property
    def name(self) -> str:
        return f"series {self.number}" if self.number is not None else f"series {self.uid}"

    @property
    def varying_rescale(self) -> bool:
        """Slices scaled differently: read as float so no slice is cast to the first one's type."""
        return len({(str(h.get("RescaleSlope", 1)), str(h.get("RescaleIntercept", 0))) for h in self.headers}) > 1


def series_source(folder: str | Path, uid: str) -> str:
    return f"{folder}{SERIES_MARK}{uid}"


def split_source(source: str | Path) -> tuple[Path, str | None]:
    """``<folder>#series=<uid>`` -> ``(folder, uid)``; any other path -> ``(path, None)``."""
    text = str(source)
    if SERIES_MARK in text:
        folder, uid = text.rsplit(SERIES_MARK, 1)
        return Path(folder), uid
    return Path(text), None


def _looks_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_dir(path: Path) -> bool:
    """A folder holding DICOM files (``.dcm`` or the ``DICM`` magic at byte 128)."""
    if not path.is_dir():
        return False
    return any(_looks_dicom(f) for f in sorted(path.iterdir())[:5] if f.is_file() and not f.name.startswith("."))


def is_dicom_source(source: str | Path) -> bool:
    """What the DICOM reader takes: a DICOM folder, ``<folder>#series=<uid>`` or a ``.dcm`` file."""
    folder, uid = split_source(source)
    if uid is not None:
        return folder.is_dir()
    return is_dicom_dir(folder) or (folder.is_file() and folder.suffix.lower() == ".dcm")


def read_header(path: Path, tags: Sequence[str] | None = None) -> Dataset | None:
    """The header of a DICOM file (no pixels; only ``tags`` if given), or None for a file that is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=path.suffix.lower() == ".dcm",
                               specific_tags=list(tags) if tags else None)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError):
        return None


def is_image(header: Dataset) -> bool:
    """An image object (CT, MR, PET, ... "Image Storage"), not a SEG, RTSTRUCT, RT dose, SR, ..."""
    sop_class = header.get("SOPClassUID")
    return sop_class is not None and "Image Storage" in pydicom.uid.UID(sop_class).name


def dicom_headers(folder: Path) -> list[tuple[Path, Dataset]]:
    """Every DICOM file directly in ``folder`` with its header (hidden files skipped)."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and _looks_dicom(path):
            header = read_header(path)
            if header is not None and "SOPClassUID" in header:
                found.append((path, header))
    return found


def image_series(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """``{SeriesInstanceUID: [(file, header), ...]}`` of the image objects directly in ``folder``."""
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, header in dicom_headers(folder):
        if is_image(header):
            groups[str(header.get("SeriesInstanceUID", ""))].append((path, header))
    return dict(groups)


def series_number(items: Sequence[tuple[Path, Dataset]]) -> int | None:
    value = items[0][1].get("SeriesNumber")
    return None if value in (None, "") else int(value)


def load_series(source: str | Path) -> Series:
    """The series ``source`` names, checked and in volume order.

    Args:
        source: a folder holding one image series, ``<folder>#series=<uid>``, or a ``.dcm`` file.

    Raises:
        MedsegError: no such series, several where one was meant, or a series that is not one
            regular stack of slices; one line naming the folder or file and the fix.
    """
    path, uid = split_source(source)
    if path.is_file():
        header = read_header(path)
        if header is None or not is_image(header):
            kind = pydicom.uid.UID(header.SOPClassUID).name if header is not None and "SOPClassUID" in header else "not DICOM"
            raise MedsegError(f"{path}: not a DICOM image ({kind}); give an image series folder")
        return _checked(path.parent, str(header.get("SeriesInstanceUID", "")), [(path, header)])
    if not path.is_dir():
        raise MedsegError(f"{path}: no such DICOM folder")
    groups = image_series(path)
    if uid is not None:
        if uid not in groups:
            raise MedsegError(f"{path}: holds no image series {uid}")
        return _checked(path, uid, groups[uid])
    if not groups:
        others = sorted({pydicom.uid.UID(h.SOPClassUID).name for _, h in dicom_headers(path)})
        raise MedsegError(f"{path}: holds no DICOM image series (found: {', '.join(others) or 'no DICOM files'})")
    if len(groups) > 1:
        numbers = ", ".join(str(series_number(items)) for items in groups.values())
        raise MedsegError(f"{path}: holds {len(groups)} image series (numbers {numbers}); give input= the folder to "
                          f"medseg.predict (one case per series) or name one as {path}{SERIES_MARK}<SeriesInstanceUID>")
    ((only, items),) = groups.items()
    return _checked(path, only, items)


def find_series(uid: str, folders: Iterable[str | Path]) -> Series:
    """The image series ``uid``, looked for in ``folders`` and every folder below them.

    Raises:
        MedsegError: not found; names the folders searched.
    """
    searched = [str(Path(top).resolve()) for top in folders]
    for top in searched:
        folder = series_folders(top).get(uid)
        if folder is not None:
            return load_series(series_source(folder, uid))
    raise MedsegError(f"the source series {uid} is in none of {', '.join(searched)}; give the folder of its images "
                      "(evaluate: images=<folder>)")


@functools.lru_cache(maxsize=16)
def series_folders(top: str) -> dict[str, Path]:
    """``{SeriesInstanceUID: folder}`` of the image series under ``top``, indexed once per process:
    evaluating N SEGs against one ``images=`` tree reads its headers once, not N times."""
    index: dict[str, Path] = {}
    for root, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(root) / name
            if name.startswith(".") or not _looks_dicom(path):
                continue
            header = read_header(path, tags=("SOPClassUID", "SeriesInstanceUID"))
            if header is not None and is_image(header):
                index.setdefault(str(header.get("SeriesInstanceUID", "")), Path(root))
    return index


def _image_type(header: Dataset) -> str:
    value = header.get("ImageType", "?")
    return value if isinstance(value, str) else "\\".join(value)


def _checked(folder: Path, uid: str, items: list[tuple[Path, Dataset]]) -> Series:
    """Refuses what is not one regular stack of slices; sorts the rest into volume order."""
    number = series_number(items)
    for path, header in items:
        _check_slice(path, header)
    if len(items) > 1:
        items = _stack(f"{folder}: series {number if number is not None else uid}", items)
    instances = [h.get("InstanceNumber") for _, h in items]
    along_normal = True
    if len(items) > 1 and None not in instances and "" not in instances:
        along_normal = not (np.diff([int(n) for n in instances]) < 0).all()
    if not along_normal:  # acquired against the normal: keep the acquisition order, as dicom2nifti writes it
        items = items[::-1]
    return Series(folder, uid, number, tuple(p for p, _ in items), tuple(h for _, h in items), along_normal)


def _check_slice(path: Path, header: Dataset) -> None:
    """One file must be a single-frame slice with a place in the patient's space."""
    if int(header.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in header:
        raise MedsegError(f"{path}: a multi-frame DICOM object ({pydicom.uid.UID(header.SOPClassUID).name}, "
                          f"{header.get('NumberOfFrames', '?')} frames); medseg reads series of single-frame slices: "
                          "convert it to NIfTI first (e.g. dcm2niix) and predict that")
    missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if k not in header]
    if missing:
        raise MedsegError(f"{path}: has no {'/'.join(missing)}: not a cross-sectional slice (a screenshot or "
                          "projection?); medseg segments CT/MR/PET-like series")


def _stack(name: str, items: list[tuple[Path, Dataset]]) -> list[tuple[Path, Dataset]]:
    """The slices sorted along their normal, if they make one regular stack; else one line saying why not."""
    sizes = {(int(h.Rows), int(h.Columns), *map(float, h.PixelSpacing)) for _, h in items}
    if len(sizes) > 1:
        raise MedsegError(f"{name} mixes slice sizes or pixel spacings ({', '.join(map(str, sorted(sizes)))}); "
                          "put each kind of slice in a folder of its own")
    orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for _, h in items])
    odd = np.flatnonzero(np.abs(orientations - orientations[0]).max(1) > ORIENTATION_TOLERANCE)
    if odd.size:
        raise MedsegError(f"{name} holds slices in several orientations (e.g. {items[0][0].name} and "
                          f"{items[odd[0]][0].name}: a localizer?); put each orientation's files in a folder of its own")
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for _, h in items])
    order = np.argsort(positions @ normal, kind="stable")
    items, positions = [items[i] for i in order], positions[order]
    depth = positions @ normal
    steps = np.diff(depth)
    if steps.min() <= STEP_TOLERANCE * steps.max():
        i = int(np.argmin(steps))
        raise MedsegError(f"{name} has two images at one position ({items[i][0].name} and {items[i + 1][0].name}, "
                          f"ImageType {_image_type(items[i][1])} / {_image_type(items[i + 1][1])}): several stacks in one "
                          "series (echoes, phases, magnitude and phase?); put each stack's files in a folder of its own")
    drift = positions[-1] - positions[0] - (depth[-1] - depth[0]) * normal
    if np.linalg.norm(drift) > TILT_TOLERANCE * min(map(float, items[0][1].PixelSpacing)):
        angle = np.degrees(np.arctan2(np.linalg.norm(drift), depth[-1] - depth[0]))
        raise MedsegError(f"{name}: slices are stacked {angle:.1f} degrees off their normal (gantry tilt); read as a "
                          "volume they would be sheared: convert it with tilt correction (dcm2niix) and predict the NIfTI")
    step = float(steps.min())  # the series' own step; a missing slice leaves a gap of a multiple of it
    off = np.flatnonzero(np.abs(steps - step) > STEP_TOLERANCE * step)
    if off.size:
        i = int(off[0])
        ratio = steps[i] / step
        where = f"between {items[i][0].name} and {items[i + 1][0].name}"
        if round(ratio) >= 2 and abs(ratio - round(ratio)) <= STEP_TOLERANCE * round(ratio):
            raise MedsegError(f"{name}: {round(ratio) - 1} slice(s) missing {where} ({steps[i]:.4g} mm apart, the series "
                              f"steps {step:.4g} mm); copy the complete series (every file of it)")
        raise MedsegError(f"{name}: unevenly spaced slices ({steps.min():.4g} to {steps.max():.4g} mm, e.g. {steps[i]:.4g} mm "
                          f"{where}); read as one volume it would be distorted: resample it to NIfTI (e.g. dcm2niix) first")
    return items
