#!/usr/bin/env python
"""Get a dataset into data/: MSD tasks and MedMNIST are downloaded (resumable, MD5-checked);
AMOS and BraTS need registration, so this prints how to get them and verifies a manual copy.

    python scripts/download_data.py --dataset msd --task spleen --output data/
    python scripts/download_data.py --dataset msd --list
    python scripts/download_data.py --dataset medmnist --task pathmnist --size 64 --output data/
    python scripts/download_data.py --dataset medsegbench --task busi --size 256 --output data/
    python scripts/download_data.py --dataset medsegbench --list
    python scripts/download_data.py --dataset amos --verify data/amos22
"""

from __future__ import annotations

import argparse
import sys

from medseg.core.errors import MedsegError
from medseg.data import download, manual


def list_msd() -> None:
    print(f"{'task':<12} {'folder':<20} {'target':<32} {'modality':<24} {'train':>5} {'test':>5} {'size':>7}")
    for short, (folder, target, modality, train, test, size) in download.MSD_TASKS.items():
        print(f"{short:<12} {folder:<20} {target:<32} {modality:<24} {train:>5} {test:>5} {size:>7}")


MEDMNIST_MODALITY = {  # Table 1 of the MedMNIST v2 paper
    "pathmnist": "colon pathology", "chestmnist": "chest X-ray", "dermamnist": "dermatoscope",
    "octmnist": "retinal OCT", "pneumoniamnist": "chest X-ray", "retinamnist": "fundus camera",
    "breastmnist": "breast ultrasound", "bloodmnist": "blood cell microscope", "tissuemnist": "kidney cortex microscope",
    "organamnist": "abdominal CT", "organcmnist": "abdominal CT", "organsmnist": "abdominal CT",
    "organmnist3d": "abdominal CT (3D)", "nodulemnist3d": "chest CT (3D)", "adrenalmnist3d": "shape from abdominal CT (3D)",
    "fracturemnist3d": "chest CT (3D)", "vesselmnist3d": "shape from brain MRA (3D)", "synapsemnist3d": "electron microscope (3D)",
}


def list_medmnist() -> None:
    print(f"{'flag':<16} {'task':<26} {'ch':>2} {'classes':>7} {'train':>7} {'val':>6} {'test':>6}  {'sizes':<13} modality")
    for flag, info in download.medmnist_flags().items():
        n = info["n_samples"]
        sizes = ",".join(map(str, download.medmnist_sizes(flag)))
        modality = MEDMNIST_MODALITY.get(flag, "")
        print(f"{flag:<16} {info['task']:<26} {info['n_channels']:>2} {len(info['label']):>7} {n['train']:>7} "
              f"{n['val']:>6} {n['test']:>6}  {sizes:<13} {modality}")


def list_medsegbench() -> None:
    from medseg.data.medsegbench import info, label_names

    print(f"{'flag':<20} {'modality':<28} {'task':<12} {'ch':>2} {'classes':>7} {'train':>6} {'val':>5} {'test':>5}  "
          "sizes        sub-sets (dataset.category)")
    for flag, facts in info().items():
        n = facts["n_samples"]
        subsets = ", ".join(f"{k} {v}" for k, v in facts["categories"].items())
        print(f"{flag:<20} {facts['modality']:<28} {facts['task']:<12} {facts['n_channels_im']:>2} "
              f"{len(label_names(flag)):>7} {n['train']:>6} {n['val']:>5} {n['test']:>5}  128,256,512  {subsets}")
    print(f"{len(info())} sets (MedSegBench, Kuş & Aydin, Scientific Data 2024; facts from the medsegbench package's INFO)")


def verify(dataset: str, path: str, year: int | None) -> int:
    report = manual.verify_amos(path) if dataset == "amos" else manual.verify_brats(path, year)
    for line in report.summary:
        print(line)
    for line in report.problems:
        print(f"problem: {line}")
    print("OK: the copy looks complete" if report.ok else f"{len(report.problems)} problem(s) found")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["msd", "medmnist", "medsegbench", "amos", "brats"], default="msd")
    parser.add_argument("--task", help="MSD task (spleen, liver, ... or Task09_Spleen), MedMNIST or MedSegBench flag")
    parser.add_argument("--output", default="data", help="data folder (default: data/)")
    parser.add_argument("--size", type=int, default=None,
                        help="MedMNIST image size: 28 (default), 64, 128, 224 (3D: 28, 64); MedSegBench: 128, 256, 512 (default)")
    parser.add_argument("--list", action="store_true", help="list the tasks/flags and exit")
    parser.add_argument("--base-url", help=f"mirror base URL (or ${download.MSD_MIRROR_ENV} / ${download.MEDMNIST_MIRROR_ENV} / "
                                           f"${download.MEDSEGBENCH_MIRROR_ENV})")
    parser.add_argument("--keep-archive", action="store_true", help="keep the MSD .tar after extraction")
    parser.add_argument("--verify", metavar="PATH", help="AMOS/BraTS: check a manually downloaded copy")
    parser.add_argument("--year", type=int, choices=[2021, 2023], help="BraTS release (default: detected)")
    args = parser.parse_args(argv)
    try:
        if args.dataset in ("amos", "brats"):
            if args.verify:
                return verify(args.dataset, args.verify, args.year)
            print(manual.AMOS_INSTRUCTIONS if args.dataset == "amos" else manual.BRATS_INSTRUCTIONS)
            return 0
        if args.list:
            {"msd": list_msd, "medmnist": list_medmnist, "medsegbench": list_medsegbench}[args.dataset]()
            return 0
        if not args.task:
            parser.error("--task is required (or --list)")
        if args.dataset == "msd":
            download.fetch_msd(args.task, args.output, base_url=args.base_url, keep_archive=args.keep_archive)
        elif args.dataset == "medsegbench":
            download.fetch_medsegbench(args.task, args.output, size=args.size or 512, base_url=args.base_url)
        else:
            download.fetch_medmnist(args.task, args.output, size=args.size or 28, base_url=args.base_url)
        return 0
    except MedsegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
