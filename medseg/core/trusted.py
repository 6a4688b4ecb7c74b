"""What medseg may build from a file someone handed it: the classes its own configs name, nothing else.

A checkpoint carries its training config so that prediction can rebuild the network, the intensity
transform, the sliding window and the label meaning. Those entries are ``_target_`` configs, and
``hydra.utils.instantiate`` imports and calls whatever a ``_target_`` names: a checkpoint whose
``dataset.intensity`` said ``{_target_: torch.save, obj: 1, f: <any path>}`` wrote that file
(Hydra's blocklist stops ``os.system``, not ``torch.save``). ``weights_only=True`` protects the
unpickling, not this. So every ``_target_`` read from a file is checked, before anything is
imported, against the targets medseg's own ``conf/`` tree puts at that very place (the networks of
``conf/model/`` for ``model``, the intensity transforms of the dataset configs for
``dataset.intensity``, ...); anything else is refused in one line naming the key. Values are
checked too: strings that OmegaConf (``${...}``) or a MONAI bundle (``$expr``, ``@ref``, ``%file``)
would evaluate are refused, since an exported bundle would run them.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Iterator, Mapping

import yaml

from medseg.core.config import CONF_DIR
from medseg.core.errors import MedsegError

# Entries of a checkpoint's config that inference instantiates, and where conf/ defines them:
# (config group folder, key path inside each of its files). A key path of () is the file itself.
ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "model": ("model", ()),
    "inferer": ("inferer", ()),
    "dataset.intensity": ("dataset", ("intensity",)),
    "dataset.target": ("dataset", ("target",)),
    "dataset.label_transform": ("dataset", ("label_transform",)),
}
# What planning writes (rules.normalisation) and the default target: part of medseg's own configs.
EXTRA = {
    "dataset.intensity": {"monai.transforms.ScaleIntensityRanged", "monai.transforms.NormalizeIntensityd"},
    "dataset.target": {"medseg.core.targets.ClassLabels", "medseg.core.targets.Regions"},
}
EVALUATED_PREFIXES = ("$", "@", "%")  # MONAI bundle syntax: an expression, a reference, a file macro


def _targets_in(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        for value in node.values():
            yield from _targets_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from _targets_in(value)


@functools.lru_cache(maxsize=1)
def allowed_targets() -> dict[str, frozenset[str]]:
    """``{role: targets}`` collected from ``conf/`` (plus what planning writes): the allow-list."""
    allowed: dict[str, set[str]] = {role: set(EXTRA.get(role, ())) for role in ROLES}
    for role, (group, key_path) in ROLES.items():
        for path in sorted((Path(CONF_DIR) / group).rglob("*.yaml")):
            node = yaml.safe_load(path.read_text()) or {}
            for key in key_path:
                node = node.get(key) if isinstance(node, Mapping) else None
            allowed[role].update(_targets_in(node))
    return {role: frozenset(targets) for role, targets in allowed.items()}


def check_values(node: Any, where: str) -> None:
    """Refuses strings that would be evaluated (OmegaConf interpolation, MONAI bundle syntax) and
    floats that are not finite, anywhere below ``node``.

    Raises:
        MedsegError: naming the key (``where``) and the value.
    """
    if isinstance(node, Mapping):
        for key, value in node.items():
            check_values(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            check_values(value, f"{where}[{i}]")
    elif isinstance(node, str):
        if "${" in node or node.startswith(EVALUATED_PREFIXES):
            raise MedsegError(f"{where}={node[:60]!r} would be evaluated as code or an interpolation; "
                              "a file medseg reads holds values only")
    elif isinstance(node, float) and not math.isfinite(node):
        raise MedsegError(f"{where}={node} is not a finite number")


def check_targets(node: Any, role: str, where: str) -> None:
    """Every ``_target_`` below ``node`` must be one that medseg's configs use for ``role``.

    Raises:
        MedsegError: naming the key and the target, before anything is imported.
    """
    allowed = allowed_targets()[role]

    def walk(value: Any, at: str) -> None:
        if isinstance(value, Mapping):
            target = value.get("_target_")
            if target is not None and target not in allowed:
                raise MedsegError(f"{at}._target_={str(target)[:80]!r} is not a class medseg builds for {role} "
                                  f"(allowed: {', '.join(sorted(allowed))}); the file was not used")
            for key, item in value.items():
                walk(item, f"{at}.{key}")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{at}[{i}]")

    walk(node, where)


def trusted_config(config: Any, source: str | Path) -> dict[str, Any]:
    """A checkpoint's config, checked: every instantiable entry names an allowed target and holds
    values only. Returns it unchanged.

    Raises:
        MedsegError: ``<source>: <key> ...`` in one line; nothing from the file was imported or run.
    """
    if not isinstance(config, Mapping) or not isinstance(config.get("dataset"), Mapping) \
            or not isinstance(config.get("model"), Mapping):
        raise MedsegError(f"{source}: its 'config' entry is not a medseg training config (no dataset/model); "
                          "point to best.pt or last.pt of a medseg run")
    try:
        for role in ROLES:
            section, _, key = role.partition(".")
            node = config.get(section)
            node = node.get(key) if key and isinstance(node, Mapping) else node
            if node is None:
                continue
            check_targets(node, role, role)
            check_values(node, role)
        check_values(config["dataset"], "dataset")
    except MedsegError as err:
        raise MedsegError(f"{source}: {err}") from None
    return dict(config)
