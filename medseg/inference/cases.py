"""Finding the scans to predict: image files, DICOM series folders, one file per channel."""

from __future__ import annotations

import re
from pathlib import Path

from medseg.core.errors import MedsegError
from medseg.core.imagefiles import IMAGE_SUFFIXES, case_id

CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")  # nnU-Net style case_0000.nii.gz


def is_dicom_dir(path: Path) -> bool:
    """A folder holding DICOM files (``.dcm`` or the ``DICM`` magic at byte 128)."""
    if not path.is_dir():
        return False
    for f in sorted(path.iterdir())[:5]:
        if f.is_file():
            if f.suffix.lower() == ".dcm":
                return True
            with open(f, "rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
    return False


def discover_cases(source: str | Path, in_channels: int = 1) -> tuple[dict[str, str | list[str]], list[str]]:
    """Cases to predict under ``source`` and the entries that are not images.

    Args:
        source: an image file, a DICOM series folder, or a folder of images / series folders.
        in_channels: for multi-channel models, files named ``<case>_0000``, ``<case>_0001``, ... are
            grouped into one case (channel-per-file); a single 4D file per case also works.

    Returns:
        ``({case id: path or [path per channel]}, [skipped entries as "path: reason"])``.
    """
    source = Path(source)
    if not source.exists():
        raise MedsegError(f"input {source} does not exist")
    if source.is_file() or is_dicom_dir(source):
        return {case_id(source): str(source)}, []
    cases: dict[str, str | list[str]] = {}
    per_channel: dict[str, dict[int, str]] = {}
    skipped = []
    for entry in sorted(source.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if is_dicom_dir(entry):
                cases[entry.name] = str(entry)
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
