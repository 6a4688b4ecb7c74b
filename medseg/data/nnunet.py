"""nnU-Net v2 raw datasets as a medseg datalist: ``dataset=nnunet dataset.root=.../DatasetXXX_Name``.

Reads the layout nnU-Net itself reads (``dataset.json`` with ``channel_names``, ``labels``,
``numTraining``, ``file_ending``; ``imagesTr/<case>_XXXX<ending>`` one file per channel;
``labelsTr/<case><ending>``), so a dataset prepared for nnU-Net trains here unchanged, and the
folds of nnU-Net's ``splits_final.json`` are kept when it is found. Every problem is one
:class:`MedsegError` line naming the file, raised before anything is cached.

The config reads ``num_classes``, ``in_channels`` and ``modality`` from ``dataset.json`` through
the ``${medseg_nnunet:<fact>,<root>}`` resolver (registered by ``import medseg``, since configs resolve
before this module is imported), so they cannot drift from the data.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import torch
from monai.transforms import MapTransform

from medseg.core.errors import MedsegError
from medseg.core.imagefiles import IMAGE_SUFFIXES
from medseg.core.targets import Regions
from medseg.data.datalist import Datalist, check_folds

log = logging.getLogger(__name__)

SPLITS_FINAL = "splits_final.json"
REQUIRED_KEYS = ("labels", "channel_names", "numTraining", "file_ending")
ENDINGS_2D = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")  # nnU-Net's NaturalImage2DIO (and Tiff)
FILE_ENDINGS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", *ENDINGS_2D)


def read_nnunet_json(root: str | Path) -> dict[str, Any]:
    """``dataset.json`` of an nnU-Net v2 raw dataset, with the keys nnU-Net requires checked."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise MedsegError(f"{path} not found: dataset.root must be an nnU-Net raw dataset folder "
                          "(DatasetXXX_Name/ with dataset.json, imagesTr/, labelsTr/)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MedsegError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(meta, dict):
        raise MedsegError(f"{path} is not an nnU-Net v2 dataset.json (a JSON object with labels, channel_names, ...)")
    if "channel_names" not in meta and "modality" in meta:  # nnU-Net accepts the v1 spelling too
        meta["channel_names"] = meta["modality"]
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        hint = " (an MSD dataset.json: use dataset=msd/... or nnUNetv2_convert_MSD_dataset)" if "training" in meta else ""
        raise MedsegError(f"{path} lacks {', '.join(missing)}: not an nnU-Net v2 dataset.json{hint}")
    _check_values(meta, path)
    ending = str(meta["file_ending"])
    if ending.lower() not in FILE_ENDINGS:
        raise MedsegError(f"{path}: file_ending '{ending}' is not an image format medseg reads ({', '.join(FILE_ENDINGS)})")
    return meta


def _check_values(meta: Mapping[str, Any], path: Path) -> None:
    """The types nnU-Net's own code assumes, checked so a malformed value is one line, not a traceback."""
    if not isinstance(meta["labels"], dict) or not meta["labels"]:
        raise MedsegError(f"{path}: labels must be an object {{\"background\": 0, \"name\": 1, ...}}, not "
                          f"{type(meta['labels']).__name__}")
    for name, value in meta["labels"].items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(_whole_number(v) for v in values):
            raise MedsegError(f"{path}: label '{name}' has value {value!r}; label values are whole numbers (0, 1, 2, ...)")
    if not isinstance(meta["channel_names"], dict) or not meta["channel_names"]:
        raise MedsegError(f"{path}: channel_names must be an object {{\"0\": \"CT\", ...}}")
    if not _whole_number(meta["numTraining"]) or int(meta["numTraining"]) < 0:
        raise MedsegError(f"{path}: numTraining={meta['numTraining']!r} is not a number of cases")
    if not isinstance(meta["file_ending"], str):
        raise MedsegError(f"{path}: file_ending={meta['file_ending']!r} must be a string such as \".nii.gz\"")
    if "dataset" in meta:
        if not isinstance(meta["dataset"], dict):
            raise MedsegError(f"{path}: 'dataset' must map case ids to {{\"images\": [...], \"label\": ...}}")
        for case, entry in meta["dataset"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or not isinstance(entry.get("label"), str):
                raise MedsegError(f"{path}: dataset entry '{case}' needs \"images\": [file per channel] and \"label\": file")


def _whole_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def parse_labels(meta: Mapping[str, Any], where: str | Path = "dataset.json") -> tuple[dict[int, str], list[list[int]] | None]:
    """``labels`` of a v2 ``dataset.json`` as medseg sees them.

    Returns:
        ``(label_names, regions)``: for exclusive labels ``({value: name}, None)`` with values
        0..N-1; for region-based labels ``({channel: region name}, [label values per region])``.

    Raises:
        MedsegError: an ignore label, region labels without ``regions_class_order``, duplicate
            or non-consecutive values (nnU-Net refuses those too).
    """
    labels = meta["labels"]
    if "ignore" in labels:
        raise MedsegError(f"{where}: the 'ignore' label (sparse annotation) is not supported by medseg; remove it")
    if any(isinstance(v, (list, tuple)) for v in labels.values()):
        if "regions_class_order" not in meta:
            raise MedsegError(f"{where}: region-based labels need 'regions_class_order' (as nnU-Net requires)")
        regions, names = [], {}
        for name, value in labels.items():
            values = sorted({int(v) for v in (value if isinstance(value, (list, tuple)) else [value])})
            if values == [0]:
                continue  # background
            names[len(regions)] = str(name)
            regions.append(values)
        if len(meta["regions_class_order"]) != len(regions):
            raise MedsegError(f"{where}: regions_class_order has {len(meta['regions_class_order'])} entries for "
                              f"{len(regions)} regions; give one label value per region")
        values = sorted({0, *(v for r in regions for v in r)})
    else:
        values = [int(v) for v in labels.values()]
        if len(set(values)) != len(values):
            raise MedsegError(f"{where}: labels {dict(labels)} give one value two names; each value needs one name")
        names = {int(v): str(k) for k, v in sorted(labels.items(), key=lambda kv: int(kv[1]))}
        regions = None
    if sorted(values) != list(range(len(values))):
        raise MedsegError(f"{where}: label values {sorted(values)} are not consecutive 0..{len(values) - 1}; "
                          "relabel the files and dataset.json (nnU-Net requires this too)")
    return names, regions


def _channel_pattern(ending: str) -> re.Pattern[str]:
    return re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$")


def channel_files(folder: Path, ending: str, num_channels: int, where: str | Path) -> dict[str, list[str]]:
    """``{case id: [file per channel]}`` of an ``imagesTr``/``imagesTs`` folder, every channel present.

    Raises:
        MedsegError: no file has the declared ending (naming what the folder does hold), a file is
            not named ``<case>_XXXX<ending>``, a channel file is missing or one too many.
    """
    dangling = sorted(p for p in folder.iterdir() if p.is_symlink() and not p.exists())
    if dangling:
        raise MedsegError(f"{dangling[0]} is a symlink to {os.readlink(dangling[0])}, which does not exist "
                          f"({len(dangling)} dangling link(s) in {folder}); fix the link or restore the file")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    matching = [p for p in files if p.name.endswith(ending)]
    others = [p for p in files if not p.name.endswith(ending) and p.name.lower().endswith(IMAGE_SUFFIXES + ENDINGS_2D)]
    if others:
        found = next(s for s in IMAGE_SUFFIXES + ENDINGS_2D if others[0].name.lower().endswith(s))
        fix = f"set file_ending to '{found}'" if not matching else "convert or remove it"
        raise MedsegError(f"{others[0]} does not end with file_ending '{ending}' of {where}; {fix}")
    pattern = _channel_pattern(ending)
    # nnU-Net's 2D RGB convention: one file <case>_0000.png holds R, G and B (channel_names R, G, B)
    one_rgb_file = ending.lower() in ENDINGS_2D and num_channels == 3 and not any(
        (m := pattern.match(p.name)) is not None and m["channel"] != "0000" for p in matching)
    if one_rgb_file:
        num_channels = 1
    cases: dict[str, dict[int, Path]] = {}
    for path in matching:
        match = pattern.match(path.name)
        if match is None:
            raise MedsegError(f"{path} is not named <case>_XXXX{ending} (XXXX: 4-digit channel index, e.g. _0000)")
        cases.setdefault(match["case"], {})[int(match["channel"])] = path
    out = {}
    for case, channels in sorted(cases.items()):
        for k in range(num_channels):
            if k not in channels:
                raise MedsegError(f"{folder / f'{case}_{k:04d}{ending}'} is missing: {where} declares "
                                  f"{num_channels} channel(s) per case")
        extra = sorted(set(channels) - set(range(num_channels)))
        if extra:
            raise MedsegError(f"{channels[extra[0]]}: channel {extra[0]} but {where} declares {num_channels} "
                              "channel(s) in channel_names")
        out[case] = [os.path.abspath(channels[k]) for k in range(num_channels)]
    return out


def _image_entry(paths: list[str]) -> str | list[str]:
    """One file per case stays a path (what the other datalists give); several are stacked as channels."""
    return paths[0] if len(paths) == 1 else paths


def nnunet_cases(root: str | Path, meta: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``{case id: {"image": path or [path per channel], "label": path}}`` of the labelled cases."""
    root = Path(root)
    meta = meta or read_nnunet_json(root)
    where = root / "dataset.json"
    ending, num_channels = str(meta["file_ending"]), len(meta["channel_names"])
    cases: dict[str, dict[str, Any]] = {}
    if "dataset" in meta:  # explicit file lists (nnU-Net's alternative to imagesTr/labelsTr)
        def resolve(p: str) -> str:
            p = os.path.expandvars(p)
            return str(Path(p) if os.path.isabs(p) else (root / p).resolve())

        for case, entry in sorted(meta["dataset"].items()):
            images = [resolve(i) for i in entry["images"]]
            if len(images) != num_channels:
                raise MedsegError(f"{where}: case {case} lists {len(images)} image(s) but channel_names declares {num_channels}")
            cases[case] = {"image": _image_entry(images), "label": resolve(entry["label"])}
    else:
        images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
        for folder in (images_dir, labels_dir):
            if not folder.is_dir():
                raise MedsegError(f"{folder} not found: an nnU-Net raw dataset has imagesTr/ and labelsTr/")
        for case, images in channel_files(images_dir, ending, num_channels, where).items():
            label = labels_dir / f"{case}{ending}"
            if not label.is_file():
                what = f"is a symlink to {os.readlink(label)}, which does not exist" if label.is_symlink() else "is missing"
                raise MedsegError(f"{label} {what}: every case in {images_dir} needs its label")
            cases[case] = {"image": _image_entry(images), "label": os.path.abspath(label)}
    if len(cases) != int(meta["numTraining"]):
        raise MedsegError(f"{where}: numTraining is {meta['numTraining']} but {len(cases)} labelled cases were found; "
                          "fix numTraining or the missing files")
    return cases


def nnunet_test_images(root: str | Path, meta: Mapping[str, Any] | None = None) -> dict[str, str | list[str]]:
    """``{case id: path or [path per channel]}`` of ``imagesTs`` (prediction only; empty when absent)."""
    root = Path(root)
    meta = meta or read_nnunet_json(root)
    folder = root / "imagesTs"
    if not folder.is_dir():
        return {}
    found = channel_files(folder, str(meta["file_ending"]), len(meta["channel_names"]), root / "dataset.json")
    return {case: _image_entry(paths) for case, paths in found.items()}


def find_splits(root: str | Path, splits: str | Path | None = None) -> Path | None:
    """Where nnU-Net's ``splits_final.json`` is: ``splits`` if given, else the raw folder, else
    ``$nnUNet_preprocessed/<DatasetXXX_Name>/`` (where nnU-Net writes it)."""
    if splits is not None:
        path = Path(splits)
        if not path.is_file():
            raise MedsegError(f"dataset.splits={path} not found; point it to nnU-Net's splits_final.json or set it to null")
        return path
    candidates = [Path(root) / SPLITS_FINAL]
    if os.environ.get("nnUNet_preprocessed"):
        candidates.append(Path(os.environ["nnUNet_preprocessed"]) / Path(root).resolve().name / SPLITS_FINAL)
    return next((p for p in candidates if p.is_file()), None)


def read_splits(path: str | Path, case_ids: Sequence[str]) -> list[dict[str, list[str]]]:
    """Folds of a ``splits_final.json`` (``[{"train": [...], "val": [...]}, ...]``), every case checked."""
    path = Path(path)
    try:
        folds = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MedsegError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from err
    check_folds(folds, case_ids, path)
    return [{"train": sorted(f["train"]), "val": sorted(f["val"])} for f in folds]


def nnunet_datalist(root: str | Path, splits: str | Path | None = None, regions: bool = False) -> Datalist:
    """An nnU-Net v2 raw dataset as a medseg datalist; folds from ``splits_final.json`` when found.

    Args:
        root: the ``DatasetXXX_Name`` folder.
        splits: an explicit ``splits_final.json`` (default: looked up, see :func:`find_splits`).
        regions: whether the config trains regions (``dataset=nnunet_regions``); must match the labels.
    """
    root = Path(root)
    meta = read_nnunet_json(root)
    where = root / "dataset.json"
    names, region_values = parse_labels(meta, where)
    if region_values is not None and not regions:
        raise MedsegError(f"{where} declares region-based labels; train it with dataset=nnunet_regions")
    if region_values is None and regions:
        raise MedsegError(f"{where} declares exclusive labels, not regions; train it with dataset=nnunet")
    cases = nnunet_cases(root, meta)
    folds = None
    path = find_splits(root, splits)
    if path is not None:
        folds = read_splits(path, list(cases))
        log.info("folds from %s (%d folds)", path, len(folds))
    return Datalist(cases, names, root, folds=folds)


def dataset_fact(fact: str, root: str) -> Any:
    """``${medseg_nnunet:<fact>,<root>}``: ``num_classes``, ``in_channels`` or ``modality`` of the dataset."""
    meta = read_nnunet_json(root)
    if fact == "in_channels":
        return len(meta["channel_names"])
    if fact == "num_classes":
        return len(parse_labels(meta, Path(root) / "dataset.json")[0])
    if fact == "modality":
        return str(meta["channel_names"].get("0", next(iter(meta["channel_names"].values()))))
    if fact == "image_kind":
        return "2d" if str(meta["file_ending"]).lower() in ENDINGS_2D else "volume"
    raise MedsegError(f"${{medseg_nnunet:{fact},...}}: unknown fact '{fact}' (num_classes, in_channels, modality, image_kind)")



def regions_target(root: str | Path, threshold: float = 0.5) -> Regions:
    """The :class:`Regions` target of a region-based dataset: each region channel is painted back
    as its ``regions_class_order`` value, in that order (what nnU-Net does)."""
    meta = read_nnunet_json(root)
    _, region_values = parse_labels(meta, Path(root) / "dataset.json")
    if region_values is None:
        raise MedsegError(f"{Path(root) / 'dataset.json'} declares exclusive labels, not regions; use dataset=nnunet")
    return Regions(threshold, [int(v) for v in meta["regions_class_order"]], list(range(len(region_values))))


class NnunetRegionsd(MapTransform):
    """Label map -> one binary channel per region of ``dataset.json`` (the regions' label values)."""

    def __init__(self, keys: str | Sequence[Hashable], root: str | Path, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        _, regions = parse_labels(read_nnunet_json(root), Path(root) / "dataset.json")
        if regions is None:
            raise MedsegError(f"{Path(root) / 'dataset.json'} declares exclusive labels, not regions; use dataset=nnunet")
        self.regions = regions

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            label = label[0] if label.ndim == 4 and label.shape[0] == 1 else label
            channels = [torch.isin(label, torch.tensor(r, dtype=label.dtype)) for r in self.regions]
            d[key] = torch.stack(channels, dim=0).to(torch.float32)
        return d
