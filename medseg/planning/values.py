"""What each plannable value may be: one rule per key, used for plan files and for the config alike.

A plan file is edited by hand and a config value is typed on the command line; both reach the
same places (the resampler, the crop, the network), where a wrong value fails late and obscurely
(a negative spacing trained happily, a string patch was a traceback, a patch the network cannot
divide was a MONAI assertion after caching). Every rule here answers "what is wrong with this
value" in words, or None.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Iterable, Mapping

from medseg.core.errors import MedsegError
from medseg.core.trusted import check_targets, check_values


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def spacing_problem(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(_number(v) and v >= 0 for v in value) \
            or not any(v > 0 for v in value):
        return "must be 3 positive voxel sizes in mm, e.g. [1.5,1.5,3.0] (0 keeps the stored spacing along an axis)"
    return None


def patch_problem(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or len(value) not in (2, 3) or not all(_whole(v) and v >= 1 for v in value):
        return "must be 3 positive whole numbers of voxels (2 for a 2D network), e.g. [96,96,96]"
    return None


def positive_whole(value: Any) -> str | None:
    return None if _whole(value) and value >= 1 else "must be a whole number >= 1"


def axes_problem(value: Any) -> str | None:
    if not isinstance(value, (list, tuple)) or not all(_whole(v) and 0 <= v <= 2 for v in value) \
            or len(set(value)) != len(value):
        return "must be a list of distinct spatial axes among 0, 1, 2"
    return None


def rotation_problem(value: Any) -> str | None:
    if value is None:
        return None
    problem = axes_problem(value)
    return problem or (None if len(value) == 2 else "must be two axes (the plane of 90-degree rotations) or null")


def slice_axis_problem(value: Any) -> str | None:
    return None if value is None or (_whole(value) and 0 <= value <= 2) else "must be 0, 1, 2 or null"


def configuration_problem(value: Any) -> str | None:
    return None if value in ("2d", "3d", "auto") else "must be 2d, 3d or auto"


def intensity_problem(value: Any) -> str | None:
    if not isinstance(value, Mapping) or "_target_" not in value:
        return "must be a transform config with a _target_ (a CT window or an MRI z-score)"
    try:
        check_targets(value, "dataset.intensity", "dataset.intensity")
        check_values(value, "dataset.intensity")
    except MedsegError as err:
        return str(err)
    return None


# dataset.<key> a plan may set, and its rule.
DATASET_RULES: dict[str, Callable[[Any], str | None]] = {
    "spacing": spacing_problem,
    "patch_size": patch_problem,
    "batch_size": positive_whole,
    "num_samples": positive_whole,
    "intensity": intensity_problem,
    "rot90_axes": rotation_problem,
    "mirror_axes": axes_problem,
    "configuration": configuration_problem,
    "slice_axis": slice_axis_problem,
}
NETWORK_KEYS = {
    "monai.networks.nets.UNet": {"channels", "strides"},
    "monai.networks.nets.DynUNet": {"kernel_size", "strides", "upsample_kernel_size", "filters", "deep_supervision",
                                    "deep_supr_num"},
}
PLAN_SECTIONS = ("dataset", "network", "fingerprint")


def unknown_key(key: str, known: Iterable[str], where: str) -> MedsegError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known))}"
    return MedsegError(f"{where}: unknown key '{key}' ({hint}); a typo would be merged silently otherwise")


def check_plan(plan: Any, where: str) -> None:
    """Refuses a plan file with unknown keys or impossible values, naming the file and the key.

    Raises:
        MedsegError: e.g. ``medseg_plan.yaml: dataset.spacing=[-1, 1, 1] must be 3 positive ...``.
    """
    if not isinstance(plan, Mapping) or not isinstance(plan.get("dataset"), Mapping):
        raise MedsegError(f"{where}: has no `dataset:` section; delete it to plan again, or train with dataset.plan=none")
    for section in plan:
        if section not in PLAN_SECTIONS:
            raise unknown_key(str(section), PLAN_SECTIONS, where)
    for key, value in plan["dataset"].items():
        rule = DATASET_RULES.get(key)
        if rule is None:
            raise unknown_key(f"dataset.{key}", [f"dataset.{k}" for k in DATASET_RULES], where)
        problem = rule(value)
        if problem:
            raise MedsegError(f"{where}: dataset.{key}={value!r} {problem}")
    network = plan.get("network") or {}
    if not isinstance(network, Mapping):
        raise MedsegError(f"{where}: network must map a network class to its planned values")
    for target, values in network.items():
        if target not in NETWORK_KEYS:
            raise unknown_key(f"network.{target}", [f"network.{k}" for k in NETWORK_KEYS], where)
        if not isinstance(values, Mapping):
            raise MedsegError(f"{where}: network.{target} must map keys to values")
        for key, value in values.items():
            if key not in NETWORK_KEYS[target]:
                raise unknown_key(f"network.{target}.{key}", [f"network.{target}.{k}" for k in NETWORK_KEYS[target]], where)
        try:
            check_values(values, f"network.{target}")
        except MedsegError as err:
            raise MedsegError(f"{where}: {err}") from None
