"""Fetching public datasets: resumable HTTP download, MD5 check, safe atomic extraction.

The archive addresses and MD5s are not copied here: MSD's come from MONAI's
``DecathlonDataset``, MedMNIST's from the installed ``medmnist`` package's ``INFO`` and MedSegBench's
from a table generated from the ``medsegbench`` package's ``INFO`` (``medseg.data.medsegbench``). MONAI's
``check_hash`` and ``extractall`` (which refuses members that would escape the target folder)
do the checking and unpacking; what is ours is resuming (HTTP Range) and never leaving a
half-extracted task behind.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

from monai.apps import DecathlonDataset
from monai.apps.utils import check_hash, extractall
from tqdm import tqdm

from medseg.core.errors import MedsegError
from medseg.core.folders import ensure_writable

log = logging.getLogger(__name__)

MSD_MIRROR_ENV = "MEDSEG_MSD_MIRROR"
MEDMNIST_MIRROR_ENV = "MEDSEG_MEDMNIST_MIRROR"
MEDSEGBENCH_MIRROR_ENV = "MEDSEG_MEDSEGBENCH_MIRROR"
CHUNK = 1 << 20


def download(url: str, dest: Path, md5: str | None, progress: bool | None = None) -> Path:
    """Downloads ``url`` to ``dest``, resuming ``dest.partial`` from where it stopped.

    The bytes go to ``<dest>.partial``; an interrupted run leaves it there and the next run asks
    the server for the rest (HTTP Range). Only a complete file whose MD5 matches is renamed to
    ``dest``; a mismatching one is deleted so the next run starts clean.

    Raises:
        MedsegError: network failure (the partial file is kept) or MD5 mismatch.
    """
    ensure_writable(dest.parent, "choose another --output")
    if dest.is_file():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if have and response.status != 206:  # server ignored Range: start over
                have = 0
            total = response.headers.get("Content-Length")
            total = int(total) + have if total is not None else None
            with open(partial, "ab" if have else "wb") as out, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                disable=not sys.stderr.isatty() if progress is None else not progress,
            ) as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        got = partial.stat().st_size
        if total is not None and got < total:  # connection closed early without an error
            raise MedsegError(f"download of {url} interrupted at {got} of {total} bytes (kept in {partial}); rerun to resume")
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # requested range beyond the end: the partial file is complete
            pass
        else:
            raise MedsegError(f"download of {url} failed: HTTP {err.code}; rerun to retry") from err
    except (urllib.error.URLError, OSError) as err:
        kept = f" ({partial.stat().st_size} bytes kept in {partial}, rerun to resume)" if partial.exists() else ""
        raise MedsegError(f"download of {url} failed: {getattr(err, 'reason', err)}{kept}") from err
    if md5 is not None and not check_hash(partial, md5, "md5"):
        partial.unlink()
        raise MedsegError(f"{dest.name} from {url} does not match its MD5 {md5}; the file was deleted, rerun to download it again")
    partial.replace(dest)
    return dest


# --- Medical Segmentation Decathlon -------------------------------------------------------------

# Short names users type -> (folder, target, modality, training cases, test cases, archive size).
MSD_TASKS: dict[str, tuple[str, str, str, int, int, str]] = {
    "brain": ("Task01_BrainTumour", "glioma (edema, non-enh., enh.)", "MRI FLAIR/T1w/T1gd/T2w", 484, 266, "7.1 GB"),
    "heart": ("Task02_Heart", "left atrium", "MRI", 20, 10, "435 MB"),
    "liver": ("Task03_Liver", "liver, tumour", "CT", 131, 70, "27 GB"),
    "hippocampus": ("Task04_Hippocampus", "hippocampus head, body", "MRI", 260, 130, "27 MB"),
    "prostate": ("Task05_Prostate", "prostate PZ, TZ", "MRI T2/ADC", 32, 16, "229 MB"),
    "lung": ("Task06_Lung", "lung nodule", "CT", 63, 32, "8.5 GB"),
    "pancreas": ("Task07_Pancreas", "pancreas, tumour", "CT", 281, 139, "11 GB"),
    "hepatic": ("Task08_HepaticVessel", "hepatic vessel, tumour", "CT", 303, 140, "8.7 GB"),
    "spleen": ("Task09_Spleen", "spleen", "CT", 41, 20, "1.5 GB"),
    "colon": ("Task10_Colon", "colon cancer", "CT", 126, 64, "5.4 GB"),
}


def msd_task(name: str) -> str:
    """Folder name (``Task09_Spleen``) for a short name, folder name or task number."""
    key = name.strip().lower()
    for short, (folder, *_) in MSD_TASKS.items():
        if key in (short, folder.lower(), folder.split("_")[0].lower(), folder.split("_")[1].lower()):
            return folder
    raise MedsegError(f"unknown MSD task '{name}'; valid: {', '.join(MSD_TASKS)}")


def msd_url(folder: str, base_url: str | None = None) -> str:
    official = DecathlonDataset.resource[folder]
    base = base_url or os.environ.get(MSD_MIRROR_ENV)
    return f"{base.rstrip('/')}/{official.rsplit('/', 1)[1]}" if base else official


def _drop_appledouble(root: Path) -> int:
    """Removes macOS ``._*`` resource-fork files that ship inside the official MSD tars."""
    junk = [p for p in root.rglob("._*") if p.is_file()]
    for p in junk:
        p.unlink()
    return len(junk)


def fetch_msd(
    name: str, output: str | Path, base_url: str | None = None, keep_archive: bool = False, md5: str | None = None
) -> Path:
    """Downloads, verifies and extracts one MSD task into ``<output>/TaskNN_Name``.

    Extraction happens in a hidden temporary folder that is renamed into place only when
    complete, so the task folder either exists whole or not at all.

    Args:
        md5: expected archive MD5; default MONAI's for the official archive.

    Returns:
        The task folder.
    """
    folder = msd_task(name)
    output = Path(output)
    task_dir = output / folder
    if (task_dir / "dataset.json").is_file():
        print(f"{folder} already present in {task_dir}")
        return task_dir
    url = msd_url(folder, base_url)
    archive = download(url, output / ".downloads" / f"{folder}.tar", md5 or DecathlonDataset.md5[folder])
    staging = output / f".{folder}.extracting"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        extractall(archive, staging, has_base=False)
    except ValueError as err:  # MONAI refuses absolute paths, '..' members and links
        shutil.rmtree(staging, ignore_errors=True)
        raise MedsegError(f"{archive} is unsafe to extract ({err}); it was not extracted, delete it") from err
    except Exception as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise MedsegError(f"{archive} could not be extracted ({err}); delete it and rerun") from err
    dropped = _drop_appledouble(staging)
    extracted = staging / folder
    if not (extracted / "dataset.json").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise MedsegError(f"{archive} has no {folder}/dataset.json; delete it and rerun")
    extracted.rename(task_dir)
    shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink()
    log.info("extracted %s (%d macOS '._' files dropped)", task_dir, dropped)
    print(f"{folder} ready in {task_dir}")
    return task_dir


# --- MedMNIST -----------------------------------------------------------------------------------

def medmnist_flags() -> dict[str, dict]:
    from medmnist import INFO

    return dict(INFO)


def medmnist_sizes(flag: str) -> list[int]:
    info = medmnist_flags()[flag]
    return [28] + sorted(int(k.split("_")[1]) for k in info if k.startswith("url_"))


def medmnist_filename(flag: str, size: int = 28) -> str:
    """The medmnist package's own file names: ``<flag>.npz`` at 28 px, else ``<flag>_<size>.npz``."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def fetch_medmnist(
    flag: str, output: str | Path, size: int = 28, base_url: str | None = None, md5: str | None = None
) -> Path:
    """Downloads ``<output>/medmnist/<flag>[_<size>].npz`` with the URL and MD5 from ``medmnist.INFO``."""
    flags = medmnist_flags()
    flag = flag.strip().lower()
    if flag not in flags:
        raise MedsegError(f"unknown MedMNIST flag '{flag}'; valid: {', '.join(flags)}")
    sizes = medmnist_sizes(flag)
    if size not in sizes:
        raise MedsegError(f"{flag} comes in sizes {sizes}, not {size}")
    info = flags[flag]
    suffix = "" if size == 28 else f"_{size}"
    return fetch_npz(info[f"url{suffix}"], md5 or info[f"MD5{suffix}"], base_url or os.environ.get(MEDMNIST_MIRROR_ENV),
                     Path(output) / "medmnist" / medmnist_filename(flag, size), f"{flag} ({size} px)")


def fetch_npz(url: str, md5: str, mirror: str | None, dest: Path, what: str) -> Path:
    """One npz file of a benchmark collection: from ``mirror`` (``<mirror>/<file name>``) if given,
    else the official ``url``; already present files are kept, the rest downloaded (resumable, MD5)."""
    if mirror:
        url = f"{mirror.rstrip('/')}/{dest.name}"
    if dest.is_file():
        print(f"{dest} already present")
        return dest
    download(url, dest, md5)
    print(f"{what} ready in {dest}")
    return dest


# --- MedSegBench --------------------------------------------------------------------------------

def fetch_medsegbench(flag: str, output: str | Path, size: int = 512, base_url: str | None = None,
                      md5: str | None = None) -> Path:
    """Downloads ``<output>/medsegbench/<flag>_<size>.npz`` with the URL and MD5 of the set's facts
    (``medseg.data.medsegbench``, from the ``medsegbench`` package's INFO); resumable, MD5-checked."""
    from medseg.data.medsegbench import SIZES, check_choice, npz_name

    flag = flag.strip().lower()
    if int(size) not in SIZES:
        raise MedsegError(f"MedSegBench comes in sizes {', '.join(map(str, SIZES))}, not {size}")
    facts = check_choice(flag, size, None)["files"][str(size)]
    return fetch_npz(facts["url"], md5 or facts["md5"], base_url or os.environ.get(MEDSEGBENCH_MIRROR_ENV),
                     Path(output) / "medsegbench" / npz_name(flag, size), f"{flag} ({size} px)")
