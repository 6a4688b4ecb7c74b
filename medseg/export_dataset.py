"""Write a medseg dataset as an nnU-Net v2 raw dataset:
``python -m medseg.export_dataset dataset=msd/spleen output=/path/nnUNet_raw [dataset_id=501]``.

Writes ``<output>/DatasetNNN_Name/`` with a v2 ``dataset.json``, ``imagesTr/<case>_XXXX.nii.gz``
(multi-channel 4D images split into one file per channel), ``labelsTr/``, ``imagesTs/`` when the
source has test images, and ``splits_final.json`` holding medseg's folds, so a model trained by
nnU-Net validates on the same cases as one trained here. The folder is written under a hidden
name and renamed at the end: an interrupted export never looks like a complete dataset.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import hydra
import nibabel as nib
from hydra.utils import instantiate
from omegaconf import DictConfig

from medseg.core.config import CONF_DIR
from medseg.core.errors import MedsegError, exit_on_user_error
from medseg.core.folders import beside_data, ensure_writable
from medseg.core.targets import ClassLabels
from medseg.data import datalist as dl
from medseg.data.loaders import resolve_task_dir
from medseg.inference.cases import CHANNEL_FILE, discover_cases

log = logging.getLogger("medseg.export_dataset")

ENDING = ".nii.gz"


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetNNN_Name`` as nnU-Net names raw datasets (3-digit id, no underscore in the name)."""
    if isinstance(dataset_id, bool) or not str(dataset_id).strip().isdigit() or not 1 <= int(dataset_id) <= 999:
        raise MedsegError(f"dataset_id={dataset_id} must be 1..999 (nnU-Net's DatasetNNN_ folders)")
    clean = re.sub(r"[^A-Za-z0-9-]+", "", name)
    if not clean:
        raise MedsegError(f"name={name!r} has no letters or digits; give name=<Name>")
    return f"Dataset{int(dataset_id):03d}_{clean}"


def default_name(task_dir: Path, dataset_name: str) -> str:
    """``Task09_Spleen`` -> ``Spleen``; ``Dataset001_X`` -> ``X``; else the config's name in CamelCase."""
    match = re.match(r"^(?:Task\d+|Dataset\d{3})_(.+)$", task_dir.name)
    if match:
        return match.group(1)
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", dataset_name) if part)


def _write_channels(source: str | list[str], case: str, folder: Path, in_channels: int) -> None:
    """``<case>_XXXX.nii.gz`` per channel: 3D NIfTI copied, 4D NIfTI split, other formats converted."""
    files = [source] if isinstance(source, str) else list(source)
    items: list[str | nib.Nifti1Image] = []
    for path in files:
        image = nib.load(path) if path.endswith((".nii", ".nii.gz")) else None
        items += nib.four_to_three(image) if image is not None and image.ndim == 4 else [path]
    if len(items) != in_channels:
        raise MedsegError(f"{files[0]}: {len(items)} channel(s) but dataset.in_channels={in_channels}; fix the dataset config")
    for k, item in enumerate(items):
        _write_image(item, folder / f"{case}_{k:04d}{ENDING}")


def _write_image(item: str | nib.Nifti1Image, target: Path) -> None:
    """One 3D image as ``.nii.gz``: copied when it already is one, else re-saved (NIfTI via
    nibabel, ``.mha``/``.nrrd`` via ITK, which keeps their geometry)."""
    if isinstance(item, nib.Nifti1Image):
        nib.save(item, str(target))
    elif item.endswith(ENDING):
        shutil.copyfile(item, target)
    elif item.endswith(".nii"):
        nib.save(nib.load(item), str(target))
    else:
        import itk

        try:
            itk.imwrite(itk.imread(item), str(target))
        except Exception as err:
            raise MedsegError(f"{item}: cannot convert to NIfTI ({type(err).__name__}: {str(err)[:100]})") from err


def _channel_names(task_dir: Path, dataset: DictConfig) -> dict[str, str]:
    """The source's own channel names (MSD ``modality``, nnU-Net ``channel_names``) when they fit, else the modality."""
    meta_path = task_dir / "dataset.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        names = meta.get("channel_names") or meta.get("modality")
        if isinstance(names, dict) and len(names) == int(dataset.in_channels):
            return {str(k): str(v).strip() for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}
    return {str(k): str(dataset.modality) for k in range(int(dataset.in_channels))}


def _labels(label_names: dict[int, str], where: Path) -> dict[str, int]:
    """v2 ``labels`` (name -> value); nnU-Net needs ``background`` = 0 and consecutive values."""
    if sorted(label_names) != list(range(len(label_names))):
        raise MedsegError(f"{where}: label values {sorted(label_names)} are not consecutive 0..N-1, which nnU-Net requires")
    out = {"background": 0}
    for value, name in sorted(label_names.items()):
        if value == 0:
            continue
        if name in out:
            raise MedsegError(f"{where}: label name '{name}' is used twice; nnU-Net needs one name per value")
        out[name] = value
    return out


def _folds(data: dl.Datalist, dataset: DictConfig, cache_dir: str) -> list[dict[str, list[str]]]:
    """medseg's folds as ``splits_final.json`` holds them (the same split ``select_split`` uses)."""
    if data.folds is not None:
        return data.folds
    if data.fixed_val is not None:
        return [{"train": sorted(data.cases), "val": sorted(data.fixed_val)}]
    folder = beside_data(data.root, cache_dir, str(dataset.name))  # where training keeps it (read-only data: the cache)
    return dl.load_or_create_splits(folder, list(data.cases), int(dataset.num_folds), int(dataset.split_seed),
                                    groups=data.groups)


def _test_cases(task_dir: Path, in_channels: int) -> dict[str, str | list[str]]:
    """Unlabelled images in ``imagesTs/``, by case id (``_0000`` channel suffixes folded)."""
    folder = task_dir / "imagesTs"
    if not folder.is_dir() or not any(p for p in folder.iterdir() if not p.name.startswith(".")):
        return {}
    cases, _ = discover_cases(folder, in_channels)
    out = {}
    for case, image in cases.items():
        match = CHANNEL_FILE.match(case)
        out[match["case"] if in_channels == 1 and match else case] = image
    return out


def export_dataset(cfg: DictConfig) -> Path:
    """Exports ``cfg.dataset`` into ``cfg.output`` as ``DatasetNNN_Name``; returns that folder.

    Raises:
        MedsegError: a classification or region dataset, a taken dataset id, a broken case.
    """
    dataset = cfg.dataset
    if "source" not in dataset or "task_dir" not in dataset:
        raise MedsegError(f"dataset={dataset.get('name')} is not a segmentation dataset; only those export to nnU-Net")
    target = instantiate(dataset.target)
    if not isinstance(target, ClassLabels) or dataset.get("label_transform") is not None:
        raise MedsegError(f"dataset={dataset.name} trains converted labels (label_transform/regions); exporting it "
                          "to nnU-Net is not supported, only datasets with exclusive labels as stored")
    output = ensure_writable(cfg.output, "choose another output=")
    task_dir = resolve_task_dir(dataset)
    data: dl.Datalist = instantiate(dataset.source)
    name = dataset_folder_name(cfg.dataset_id, cfg.name or default_name(task_dir, str(dataset.name)))
    taken = sorted(p.name for p in output.glob(f"Dataset{int(cfg.dataset_id):03d}_*") if p.is_dir())
    if taken:
        raise MedsegError(f"{output / taken[0]} already exists with dataset id {cfg.dataset_id}: choose another "
                          "dataset_id= or delete that folder (nothing was overwritten)")
    labels = _labels(data.label_names, task_dir / "dataset.json")
    cases = {**data.cases, **(data.fixed_val or {})}
    folds = _folds(data, dataset, str(cfg.paths.cache_dir))
    tests = _test_cases(task_dir, int(dataset.in_channels))

    tmp = output / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from an interrupted export
    for sub in ("imagesTr", "labelsTr", *(("imagesTs",) if tests else ())):
        (tmp / sub).mkdir(parents=True)
    for case, entry in sorted(cases.items()):
        _write_channels(entry["image"], case, tmp / "imagesTr", int(dataset.in_channels))
        _write_image(entry["label"], tmp / "labelsTr" / f"{case}{ENDING}")
    for case, image in sorted(tests.items()):
        _write_channels(image, case, tmp / "imagesTs", int(dataset.in_channels))
    meta = {
        "name": name.split("_", 1)[1],
        "description": f"exported by medseg from {task_dir} (dataset={dataset.name})",
        "channel_names": _channel_names(task_dir, dataset),
        "labels": labels,
        "numTraining": len(cases),
        "file_ending": ENDING,
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=4))
    (tmp / "splits_final.json").write_text(json.dumps(folds, indent=4))
    target_dir = output / name
    tmp.rename(target_dir)
    print(f"wrote {target_dir}: {len(cases)} training, {len(tests)} test case(s), {len(folds)} fold(s); "
          f"for nnU-Net's training copy splits_final.json to $nnUNet_preprocessed/{name}/")
    return target_dir


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export_dataset")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    export_dataset(cfg)


if __name__ == "__main__":
    main()
