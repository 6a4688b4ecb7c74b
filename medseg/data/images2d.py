"""2D images (PNG, JPEG, TIFF, BMP) as one-slice volumes, and folders of images with their masks.

A 2D image is read as a volume with one slice, ``(H, W, 1)`` rows first (the file's own rows and
columns: no transposition, so a mask written back overlays its image pixel for pixel), with the
identity affine (1 px "spacing", as nnU-Net's ``NaturalImage2DIO`` gives it). From there it takes
the one segmentation path: the plan sees a volume whose third axis is a single slice and plans the
2D configuration (a 2D network on slices along that axis, ``medseg.core.networks``).

What the files may hold is checked here, one line per problem naming the file:
- images: grey, grey+alpha, RGB or RGBA, 8 or 16 bit; an RGB file whose three channels are equal
  (a grey image saved as RGB) is read as one channel; palette images are refused (their values
  are colour-table indices, not intensities).
- masks: lossless (PNG, TIFF, BMP), 8-bit grey (or equal RGB channels) holding class indices
  0..K-1, or 0/255 for a binary mask; anything else (anti-aliased edges, a JPEG mask's compression
  noise, palette or 16-bit masks) is refused with the values found.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from monai.data import ImageReader

from medseg.core.errors import MedsegError
from medseg.core.imagefiles import IMAGE_2D_SUFFIXES, case_id, is_image_2d
from medseg.data.datalist import Datalist

log = logging.getLogger(__name__)

LOSSY = (".jpg", ".jpeg")
_reported_255: set[str] = set()


def _open(path: str | Path):
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except Exception as err:  # PIL raises many types for truncated or foreign files
        raise MedsegError(f"{path}: cannot be read as a 2D image ({type(err).__name__}: {str(err)[:100]}); "
                          "re-export it or leave the case out") from err
    if getattr(image, "n_frames", 1) > 1:
        raise MedsegError(f"{path}: holds {image.n_frames} frames (a multi-page TIFF or an animation); medseg reads one "
                          "2D image per file: save each frame as its own file, or the stack as a 3D volume (.nii.gz)")
    return image


def _colour_to_grey(array: np.ndarray) -> np.ndarray:
    """``(H, W, 3|4)`` -> ``(H, W)`` when the colour channels are equal (a grey image saved as RGB)."""
    rgb = array[..., :3]
    return rgb[..., 0] if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]) else array


def read_image_2d(path: str | Path, kind: str = "image") -> np.ndarray:
    """Pixels of one 2D file as ``(H, W)`` (grey) or ``(H, W, C)`` (colour), rows first.

    Args:
        kind: ``image`` (intensities) or ``mask`` (class indices; stricter, see the module docstring).

    Raises:
        MedsegError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if kind == "mask" and path.name.lower().endswith(LOSSY):
        raise MedsegError(f"{path}: a JPEG mask (lossy compression blurs its edges into values no class has); "
                          "save masks losslessly as PNG")
    image = _open(path)
    mode = image.mode
    if mode in ("P", "PA"):
        raise MedsegError(f"{path}: is a palette image (its values index a colour table); save it as 8-bit grey "
                          f"{'class indices' if kind == 'mask' else 'or RGB'}")
    if kind == "mask" and mode not in ("1", "L", "LA", "RGB", "RGBA"):
        raise MedsegError(f"{path}: is a {mode} ({'16-bit' if 'I;16' in mode or mode == 'I' else 'non-8-bit'}) mask; "
                          "save masks as 8-bit grey PNGs of class indices (or 0/255)")
    if mode == "CMYK" or mode == "YCbCr" or mode == "LAB" or mode == "HSV":
        image = image.convert("RGB")
        mode = "RGB"
    array = np.asarray(image)
    if mode == "1":
        array = array.astype(np.uint8)
    if mode in ("LA",):
        array = array[..., 0]
    if array.ndim == 3:
        array = _colour_to_grey(array)
        if array.ndim == 3:
            array = array[..., :3]  # alpha dropped
            if kind == "mask":
                raise MedsegError(f"{path}: is a colour mask (its R, G, B channels differ); a mask holds one class "
                                  "index per pixel: save it as 8-bit grey")
    if array.ndim not in (2, 3) or array.size == 0:
        raise MedsegError(f"{path}: has shape {array.shape}, not a 2D image")
    if kind == "mask" and array.max(initial=0) == 255 and np.isin(array, (0, 255)).all():
        _report_255(path)
        array = (array // 255).astype(np.uint8)  # a binary mask stored as 0/255 (nnU-Net refuses these, #1777)
    return array


def _report_255(path: Path) -> None:
    key = str(path.parent)
    if key not in _reported_255:
        _reported_255.add(key)
        log.info("masks in %s are stored as 0/255: read as 0/1 (binary)", key)


def mask_problem(values: np.ndarray, num_classes: int, where: str | Path) -> str | None:
    """What is wrong with a 2D mask's values (after 0/255 masks were read as 0/1), or None.

    Class indices 0..K-1 are fine; anything else (anti-aliased edges, too few classes declared)
    is named with the values found and the fix.
    """
    found = sorted(int(v) for v in np.unique(values))
    if set(found) <= set(range(num_classes)):
        return None
    shown = found if len(found) <= 8 else [*found[:4], "...", *found[-2:]]
    hint = ("anti-aliased edges or lossy compression: save hard masks (one class index per pixel)" if len(found) > 3
            else f"declare the classes (dataset.num_classes={max(found) + 1}) or relabel the mask")
    return (f"{where}: mask holds values {shown}, neither class indices 0..{num_classes - 1} nor a 0/255 binary mask; "
            f"{hint}")


class Image2DReader(ImageReader):
    """MONAI reader for 2D files: a one-slice volume ``(H, W, 1)`` (``(H, W, 1, C)`` in colour), rows
    first, identity affine. Registered on medseg's ``LoadImaged`` (``medseg.data.readers``), so it is
    tried for the suffixes it claims and MONAI's own readers take everything else.

    Args:
        kind: ``image`` or ``mask`` (see :func:`read_image_2d`).
        channels: channels the network takes: a grey image is repeated to 3 for a colour network; a
            colour image for a grey network is refused (never silently converted).
    """

    def __init__(self, kind: str = "image", channels: int | None = None):
        super().__init__()
        self.kind, self.channels = kind, channels

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return bool(names) and all(is_image_2d(n) for n in names)

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> list[tuple[str, np.ndarray]]:
        names = [data] if isinstance(data, (str, Path)) else list(data)
        return [(str(n), read_image_2d(n, self.kind)) for n in names]

    def get_data(self, img: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, dict]:
        arrays = []
        for name, array in img:
            if self.channels is not None and self.kind == "image":
                colour = array.ndim == 3
                if colour and self.channels == 1:
                    raise MedsegError(f"{name}: is a colour image but the model takes grey images (1 channel); "
                                      "give grey images, or train on colour data")
                if not colour and self.channels > 1:
                    array = np.repeat(array[..., None], self.channels, axis=-1)  # a grey frame in a colour set
            arrays.append(array)
        shapes = {a.shape[:2] for a in arrays}
        if len(shapes) != 1:
            raise MedsegError(f"{img[0][0]}: the channel files of one case differ in size ({sorted(shapes)})")
        # one file per channel (nnU-Net's case_0000.png, case_0001.png): stacked as channels
        planes = [a[..., None] if a.ndim == 2 else a for a in arrays]
        stacked = np.concatenate(planes, axis=-1)
        volume = stacked[:, :, None, :]  # (H, W, 1, C): a one-slice volume, channels last
        channel_dim: Any = -1
        if volume.shape[-1] == 1:
            volume, channel_dim = volume[..., 0], "no_channel"
        affine = np.eye(4)
        meta = {"affine": affine, "original_affine": affine.copy(), "spatial_shape": np.asarray(volume.shape[:3]),
                "original_channel_dim": channel_dim, "space": "RAS", "filename_or_obj": img[0][0]}
        return volume.astype(np.float32), meta


# --- folders of images and masks -------------------------------------------------------------------

def _files(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    if not folder.is_dir():
        raise MedsegError(f"{folder} not found: a 2D dataset folder holds images/ and masks/ with the same file names")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.lower().endswith(suffixes):
            continue
        if path.is_symlink() and not path.exists():
            raise MedsegError(f"{path} is a symlink to {path.readlink()}, which does not exist; fix the link")
        cid = case_id(path)
        if cid in found:
            raise MedsegError(f"{path} and {found[cid]} are one case in two formats; keep one")
        found[cid] = path
    return found


def images2d_cases(root: str | Path) -> dict[str, dict[str, str]]:
    """``{case: {"image", "label"}}`` of ``root/images`` and ``root/masks`` paired by file name.

    Raises:
        MedsegError: a missing folder, an image without its mask (or a mask without its image),
            a JPEG mask, no images at all.
    """
    root = Path(root)
    images = _files(root / "images", IMAGE_2D_SUFFIXES)
    masks = _files(root / "masks", IMAGE_2D_SUFFIXES)
    if not images:
        raise MedsegError(f"{root / 'images'} holds no images ({', '.join(IMAGE_2D_SUFFIXES)})")
    lossy = [p for p in masks.values() if p.name.lower().endswith(LOSSY)]
    if lossy:
        raise MedsegError(f"{lossy[0]}: a JPEG mask (lossy compression blurs its edges into values no class has); "
                          "save masks losslessly as PNG")
    for cid, path in images.items():
        if cid not in masks:
            raise MedsegError(f"{path} has no mask {root / 'masks' / (cid + '.png')}: every image needs a mask of the same name")
    extra = sorted(set(masks) - set(images))
    if extra:
        raise MedsegError(f"{masks[extra[0]]} has no image in {root / 'images'} ({len(extra)} mask(s) without an image)")
    return {cid: {"image": str(images[cid].absolute()), "label": str(masks[cid].absolute())} for cid in sorted(images)}


def subject_groups(case_ids: Sequence[str], pattern: str | None) -> dict[str, str] | None:
    """``{case: subject}`` from ``pattern``'s first group (``^(\\d+)_`` makes ``010_HC`` and
    ``010_2HC`` one subject), so folds never split a subject's images; None without a pattern.

    Raises:
        MedsegError: a case id the pattern does not match.
    """
    if not pattern:
        return None
    regex = re.compile(pattern)
    groups = {}
    for cid in case_ids:
        match = regex.search(cid)
        if match is None:
            raise MedsegError(f"dataset.group_pattern={pattern!r} does not match case '{cid}'; fix the pattern "
                              "(its first group names the subject)")
        groups[cid] = match.group(1) if match.groups() else match.group(0)
    return groups


def images2d_datalist(root: str | Path, num_classes: int = 2, label_names: Mapping[Any, str] | None = None,
                      group_pattern: str | None = None) -> Datalist:
    """A folder of 2D images and masks as a medseg datalist (seeded folds, by subject with ``group_pattern``)."""
    cases = images2d_cases(root)
    names = {int(k): str(v) for k, v in (label_names or {}).items()} or \
        {0: "background", **{i: f"class_{i}" for i in range(1, int(num_classes))}}
    if len(names) != int(num_classes):
        raise MedsegError(f"dataset.label_names has {len(names)} names but dataset.num_classes={num_classes}")
    if num_classes == 2 and not label_names:
        names = {0: "background", 1: "foreground"}
    return Datalist(cases, names, Path(root), groups=subject_groups(list(cases), group_pattern))


def dataset_fact(fact: str, root: str) -> Any:
    """``${medseg_images2d:in_channels,<root>}``: 3 when the folder's images are in colour, else 1.

    Files in an RGB mode whose channels are all equal are grey; the first 32 colour-mode files decide.
    """
    if fact != "in_channels":
        raise MedsegError(f"${{medseg_images2d:{fact},...}}: unknown fact '{fact}' (in_channels)")
    images = _files(Path(root) / "images", IMAGE_2D_SUFFIXES)
    if not images:
        raise MedsegError(f"{Path(root) / 'images'} holds no images ({', '.join(IMAGE_2D_SUFFIXES)})")
    from PIL import Image

    checked = 0
    for path in images.values():
        try:
            with Image.open(path) as header:  # the mode is in the header: no pixels decoded
                mode = header.mode
        except Exception:
            continue  # an unreadable file is named by the data check, with the others
        if mode not in ("RGB", "RGBA", "CMYK", "YCbCr"):
            continue
        if read_image_2d(path).ndim == 3:
            return 3
        checked += 1
        if checked >= 32:
            break
    return 1
