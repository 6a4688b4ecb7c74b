"""Finding the scans to predict: image files, DICOM series, one file per channel."""

from __future__ import annotations

import re
from pathlib import Path

from medseg.core.errors import MedsegError
from medseg.core.imagefiles import IMAGE_SUFFIXES, case_id
from medseg.data.dicom_series import image_series, is_dicom_dir, series_number, series_source

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net style case_0000.nii.gz


def dicom_cases(folder: Path) -> dict[str, str]:
    """One case per image series in a DICOM folder, never two series in one volume.

    A folder holding one image series is the case ``<folder>``; one holding several gives
    ``<folder>_<SeriesNumber>`` each (``<folder>_<SeriesInstanceUID>`` when the numbers are missing
    or repeat), read from ``<folder>#series=<SeriesInstanceUID>``. Non-image objects (SEG,
    RTSTRUCT, SR, ...) are not cases. An empty result means: no image series in the folder.
    """
    groups = image_series(folder)
    if len(groups) <= 1:
        return {folder.name: str(folder)} if groups else {}
    numbers = [series_number(items) for items in groups.values()]
    distinct = None not in numbers and len(set(numbers)) == len(numbers)
    cases = {f"{folder.name}_{number if distinct else uid}": series_source(folder, uid) for uid, number in zip(groups, numbers)}
    return dict(sorted(cases.items()))


def discover_cases(source: str | Path, in_channels: int = 1) -> tuple[dict[str, str | list[str]], list[str]]:
    """Cases to predict under ``source`` and the entries that are not images.

    Args:
        source: an image file, a DICOM folder, or a folder of images / DICOM folders (a DICOM
            folder gives one case per image series: :func:`dicom_cases`).
        in_channels: for multi-channel models, files named ``<case>_0000``, ``<case>_0001``, ... are
            grouped into one case (channel-per-file); a single 4D file per case also works.

    Returns:
        ``({case id: path or [path per channel]}, [skipped entries as "path: reason"])``.
    """
    source = Path(source)
    if not source.exists():
        raise MedsegError(f"input {source} does not exist")
    if source.is_file():  # one file: named as in a folder (nnU-Net's <case>_0000 of a 1-channel model is <case>)
        match = CHANNEL_FILE.match(case_id(source))
        single = match is not None and match["channel"] == "0000" and in_channels == 1
        return {match["case"] if single else case_id(source): str(source)}, []
    if is_dicom_dir(source):
        series = dicom_cases(source)
        if not series:
            raise MedsegError(f"{source} holds no DICOM image series (only objects such as SEG or RTSTRUCT)")
        return dict(series), []
    cases: dict[str, str | list[str]] = {}
    per_channel: dict[str, dict[int, str]] = {}
    skipped = []
    for entry in sorted(source.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if is_dicom_dir(entry):
                series = dicom_cases(entry)
                cases.update(series)
                if not series:
                    skipped.append(f"{entry}: holds no DICOM image series (only objects such as SEG or RTSTRUCT); skipped")
            else:
                skipped.append(f"{entry}: folder without DICOM files; skipped")
            continue
        if not entry.name.endswith(IMAGE_SUFFIXES):
            if entry.suffix.lower() not in (".raw", ".zraw"):  # .mhd data files travel with their header
                skipped.append(f"{entry}: not an image ({', '.join(IMAGE_SUFFIXES)} or a DICOM folder); skipped")
            continue
        cid = case_id(entry)
        match = CHANNEL_FILE.match(cid)
        if match and (in_channels > 1 or match["channel"] == "0000"):  # nnU-Net naming, 1-channel included
            per_channel.setdefault(match["case"], {})[int(match["channel"])] = str(entry)
        else:
            cases[cid] = str(entry)
    for cid, channels in per_channel.items():
        files = [channels[k] for k in sorted(channels)]
        cases[cid] = files[0] if in_channels == 1 and len(files) == 1 else files
    if not cases:
        raise MedsegError(f"no images found in {source} (looked for {', '.join(IMAGE_SUFFIXES)} and DICOM folders)")
    return dict(sorted(cases.items())), skipped
