"""The plan: the data-dependent recipe values as a readable YAML file, and merging it into a config.

Precedence is *command line > plan > dataset YAML*: a value the user set on the command line is
never replaced; every other planned value replaces the dataset config's. The plan file
(``<task_dir>/medseg_plan.yaml``, or ``<paths.cache_dir>/<dataset.name>/`` when the data folder
is read-only) may be edited by hand: it is used as it is until the data changes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from medseg.core.errors import MedsegError
from medseg.planning import rules
from medseg.planning.values import check_plan

log = logging.getLogger(__name__)

PLAN_FILE = "medseg_plan.yaml"


def make_plan(fingerprint: dict[str, Any], modality: str, settings: DictConfig | dict,
              spacing: Sequence[float] | None = None, patch: Sequence[int] | None = None,
              extra_divisor: int = 1, configuration: str | None = None) -> dict[str, Any]:
    """The plan of one dataset from its fingerprint (``rules`` says how each value is chosen).

    Args:
        settings: the ``planner`` config (voxel budgets, channel widths).
        spacing, patch: values the user fixed; what depends on them is planned around them.
        extra_divisor: what a network outside the planned ones needs the patch to be a multiple of.
        configuration: ``2d`` or ``3d`` if the user chose it, else the rule's choice.
    """
    cases = fingerprint["per_case"]
    spacings, shapes = [c["spacing"] for c in cases], [c["cropped_shape"] for c in cases]
    picture = rules.single_slice_axis(shapes)  # 2D images: every case one voxel thick along this axis
    if spacing is None:
        spacing = (rules.picture_spacing(np.median(shapes, 0).tolist(), picture, int(settings["image_pixels"]))
                   if picture is not None else rules.target_spacing(spacings, shapes))
    spacing = [float(s) for s in spacing]
    median = np.median([rules.resampled_shape(c["cropped_shape"], c["spacing"], spacing) for c in cases], 0).tolist()
    # What the decisions see: the grid's spacing, or for lost spacing (identity affines) the thick axis it implies.
    geometry = [s if s > 0 else float(np.median([c["spacing"][a] for c in cases])) for a, s in enumerate(spacing)]
    unknown = picture is None and rules.spacing_unknown(spacings, shapes)
    if unknown:
        geometry = rules.effective_spacing(geometry, median)
    if picture is not None:
        axis, configuration = picture, "2d"
    else:
        axis = rules.slice_axis(geometry, median)
        if configuration not in ("2d", "3d"):
            configuration = rules.default_configuration(geometry, median, int(settings["min_slices_3d"]))
    plane = [a for a in range(3) if a != axis] if configuration == "2d" else list(range(3))
    if configuration == "2d":
        spacing[axis] = 0.0  # slices keep their own spacing: each is segmented on its own
    budget, step_budget = ((int(settings["patch_pixels"]), int(settings["step_pixels"])) if configuration == "2d"
                           else (int(settings["patch_voxels"]), int(settings["step_voxels"])))
    if patch is not None and len(patch) != len(plane):
        raise MedsegError(f"dataset.patch_size={list(patch)} has {len(patch)} values but the {configuration} configuration "
                          f"takes {len(plane)}" + (" (2D images)" if picture is not None else
                                                   f"; set dataset.configuration={'2d' if len(patch) == 2 else '3d'}"))
    if patch is None:
        patch, net = rules.fit_patch([median[a] for a in plane], [geometry[a] for a in plane], budget, extra_divisor)
    else:
        patch, net = [int(p) for p in patch], rules.topology(patch, [geometry[a] for a in plane])
    strides, kernels = net["strides"], net["kernels"]
    window = list(patch) if configuration == "3d" else [1 if a == axis else patch[plane.index(a)] for a in range(3)]
    patches = rules.patches_per_step(window, median, len(cases), step_budget)
    num_samples = 2 if patches >= 4 else 1  # patches drawn per cached volume (cheap: the volume is read once)
    levels = len(strides)
    intensity = rules.normalisation(modality, fingerprint["foreground_intensity"][0])
    ordered = rules.ordered_axes([c.get("class_centroids", {}) for c in cases])
    mirrored = rules.mirror_axes(geometry, ordered, slices=axis if configuration == "2d" else None)
    return {
        "dataset": {
            "configuration": configuration,
            "slice_axis": axis if configuration == "2d" else None,
            "spacing": spacing,
            "patch_size": patch,
            "batch_size": max(1, patches // num_samples),
            "num_samples": num_samples,
            **({"intensity": intensity} if intensity is not None else {}),
            "rot90_axes": rules.rotation_axes(window, mirrored),
            "mirror_axes": mirrored,
        },
        "network": {  # applied to the network chosen (model=...), when it is one of these
            "monai.networks.nets.UNet": {
                "channels": rules.unet_channels(levels, int(settings["unet_channels"]), int(settings["max_channels"])),
                "strides": strides[1:],
            },
            "monai.networks.nets.DynUNet": {
                "kernel_size": kernels,
                "strides": strides,
                "upsample_kernel_size": strides[1:],
                "filters": rules.unet_channels(levels, int(settings["dynunet_filters"]), int(settings["max_filters"])),
                "deep_supervision": levels >= 3,  # heads need at least two up-sampling levels below the top
                "deep_supr_num": max(1, min(2, levels - 2)),
            },
        },
        "fingerprint": {
            "key": fingerprint.get("key"),
            **({"spacing_unknown": True, "planning_spacing": [round(g, 3) for g in geometry]} if unknown else {}),
            "cases": fingerprint["cases"],
            "median_spacing": [round(s, 4) for s in fingerprint["median_spacing"]],
            "median_cropped_shape": fingerprint["median_cropped_shape"],
            "median_resampled_shape": [round(s, 1) for s in median],
        },
    }


def _override_keys(overrides: Sequence[str], groups: set[str]) -> set[str]:
    """Config keys the command line set (group choices such as ``model=dynunet`` are not values)."""
    keys = set()
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~").strip()
        if key.split("@", 1)[0] not in groups:
            keys.add(key)
    return keys


def _user_set(key: str, user: set[str]) -> bool:
    return any(key == u or key.startswith(u + ".") or u.startswith(key + ".") for u in user)


def planned_values(plan: dict[str, Any], model_target: str | None) -> dict[str, Any]:
    """The plan as ``{dotted config key: value}`` for a config whose network is ``model_target``."""
    values = {f"dataset.{k}": v for k, v in plan["dataset"].items()}
    network = plan.get("network", {}).get(model_target or "")
    if network:
        values.update({f"model.{k}": v for k, v in network.items()})
    if plan["dataset"].get("rot90_axes") is None:
        values["augment.random.rot90"] = None  # no plane to rotate in (equal sides, both mirrored)
    for axis, name in enumerate(("flip_x", "flip_y", "flip_z")):
        if axis not in plan["dataset"].get("mirror_axes", (0, 1, 2)):
            values[f"augment.random.{name}"] = None  # training flips follow the planned mirror axes
    return values


def user_sets_network(overrides: Sequence[str], groups: set[str]) -> bool:
    """Whether the command line set any ``model.*`` value: then the network is the user's, whole."""
    return any(k == "model" or k.startswith("model.") for k in _override_keys(overrides, groups))


def merge(cfg: DictConfig, plan: dict[str, Any], overrides: Sequence[str], groups: set[str]) -> list[str]:
    """Writes the plan's values into ``cfg`` except those the command line set. Returns the keys written.

    The network's topology is one unit: if the command line set any ``model.*`` value, none of the
    planned ones is written (planned strides beside the user's channels would not fit). Training
    flips and 90-degree rotations follow the mirror and rotation axes the run ends up with (the
    plan's, or the command line's).
    """
    user = _override_keys(overrides, groups)
    own_network = user_sets_network(overrides, groups)
    written = []
    model_target = OmegaConf.select(cfg, "model._target_")
    with open_dict(cfg):
        for key, value in planned_values(plan, model_target).items():
            if key.startswith("augment.") or _user_set(key, user) or (own_network and key.startswith("model.")):
                continue
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
            written.append(key)
        random = OmegaConf.select(cfg, "augment.random")
        mirrored = OmegaConf.select(cfg, "dataset.mirror_axes")
        if random is None or mirrored is None:
            return written
        off = [name for axis, name in enumerate(("flip_x", "flip_y", "flip_z")) if axis not in mirrored]
        if OmegaConf.select(cfg, "dataset.rot90_axes") is None:
            off.append("rot90")  # no plane to rotate in (equal sides, both mirrored)
        for name in off:
            key = f"augment.random.{name}"
            if name in random and random[name] is not None and not _user_set(key, user):
                OmegaConf.update(cfg, key, None, merge=False)
                written.append(key)
    return written


def write_plan(plan: dict[str, Any], path: Path, title: str) -> None:
    """The plan as commented YAML, written to a temporary file and renamed."""
    text = (f"# medseg plan for {title}: made from the fingerprint of the data by `python -m medseg.plan`.\n"
            "# Edit any value: training uses this file as it is until the data change (then it is planned again,\n"
            "# the edited file kept as medseg_plan.yaml.bak). The command line still wins over it.\n")
    text += yaml.safe_dump(plan, sort_keys=False, default_flow_style=None, width=110)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_plan(path: Path) -> dict[str, Any]:
    """A plan file, checked for the sections training needs.

    Raises:
        MedsegError: unreadable YAML or a missing section, naming the file.
    """
    try:
        plan = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise MedsegError(f"{path}: cannot be read as a plan ({type(err).__name__}); fix it, delete it to plan "
                          "again, or train with dataset.plan=none") from err
    check_plan(plan, str(path))
    return plan


def backup_path(path: Path) -> Path:
    """A backup name that does not exist yet (``.yaml.bak``, ``.yaml.bak1``, ...): planning again twice
    never overwrites the backup that holds the user's hand edit."""
    candidate, n = path.with_suffix(path.suffix + ".bak"), 0
    while candidate.exists():
        n += 1
        candidate = path.with_suffix(f"{path.suffix}.bak{n}")
    return candidate


def table(plan: dict[str, Any], model_target: str | None = None) -> str:
    """The plan as an aligned two-column table for the log and the terminal."""
    rows = [(k, v) for k, v in planned_values(plan, model_target).items()]
    rows += [(f"fingerprint.{k}", v) for k, v in plan.get("fingerprint", {}).items() if k != "key"]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
