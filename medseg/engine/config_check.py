"""Config values checked before anything is cached or trained: one line per mistake, naming the key.

Types and ranges of the trainer and loader settings, the network's output channels against the
dataset's classes, and a patch size the network's down-sampling divides.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from medseg.core.errors import MedsegError
from medseg.planning.rules import network_divisors
from medseg.planning.values import DATASET_RULES


def _select(cfg: DictConfig, key: str) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def check_train_config(cfg: DictConfig) -> None:
    """Refuses config values that would fail later (after caching, or after an epoch).

    Raises:
        MedsegError: one line naming the key, its value and what it must be.
    """
    for key, minimum, null in (("trainer.max_epochs", 1, False), ("trainer.val_every", 1, False),
                               ("trainer.steps_per_epoch", 1, True), ("dataset.batch_size", 1, False),
                               ("dataset.num_workers", 0, False)):
        value = _select(cfg, key)
        if value is None and null:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise MedsegError(f"{key}={value!r} must be a whole number >= {minimum}" + (" (or null)" if null else ""))
    minutes = _select(cfg, "trainer.max_minutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
        raise MedsegError(f"trainer.max_minutes={minutes!r} must be a positive number of minutes (or null)")
    check_dataset_values(cfg)
    _check_configuration(cfg)
    _check_inferer(cfg)
    model, classes = cfg.get("model"), _select(cfg, "dataset.num_classes")
    if model is None:
        return
    for key in ("out_channels", "num_classes"):
        if key in model and model[key] != classes:
            raise MedsegError(f"model.{key}={model[key]} but dataset.num_classes={classes}: the network must output "
                              "one channel per class; drop the model override")
    patch = _plain(_select(cfg, "dataset.patch_size"))
    if patch is None:
        return
    divisors = network_divisors(model, len(patch))
    if divisors and any(p % d for p, d in zip(patch, divisors)):
        fixed = [max(d, int(round(p / d)) * d) for p, d in zip(patch, divisors)]
        factor = divisors[0] if len(set(divisors)) == 1 else "x".join(map(str, divisors))
        raise MedsegError(f"dataset.patch_size={list(patch)} is not divisible by {factor}, the down-sampling of "
                          f"{str(model._target_).rsplit('.', 1)[-1]}: use e.g. dataset.patch_size=[{','.join(map(str, fixed))}]")


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def check_dataset_values(cfg: DictConfig) -> None:
    """The dataset's plannable values (from the command line, the dataset YAML or the plan), by the
    same rules a plan file is checked with."""
    dataset = cfg.get("dataset") or {}
    for key, rule in DATASET_RULES.items():
        if key not in dataset or key == "intensity":  # the intensity transform is the user's own config
            continue
        value = _plain(dataset.get(key))
        if value is None and key in ("rot90_axes", "slice_axis"):
            continue
        problem = rule(value)
        if problem:
            raise MedsegError(f"dataset.{key}={value!r} {problem}")


def _check_configuration(cfg: DictConfig) -> None:
    """``configuration``, ``slice_axis`` and the patch's length say the same thing, or the network
    and the windows would disagree about their dimensions."""
    dataset = cfg.get("dataset") or {}
    if "configuration" not in dataset or dataset.get("patch_size") is None:
        return
    configuration, axis, patch = dataset.get("configuration"), dataset.get("slice_axis"), list(dataset.patch_size)
    if configuration == "2d" and (axis is None or len(patch) != 2):
        raise MedsegError(f"dataset.configuration=2d needs dataset.slice_axis (0, 1 or 2) and a 2-value dataset.patch_size "
                          f"(got slice_axis={axis}, patch_size={patch}); or let the plan choose them (dataset.plan=auto)")
    if configuration != "2d" and (axis is not None or len(patch) != 3):
        raise MedsegError(f"dataset.configuration={configuration} needs a 3-value dataset.patch_size and no slice_axis "
                          f"(got slice_axis={axis}, patch_size={patch}); use dataset.configuration=2d for slices")


def _check_inferer(cfg: DictConfig) -> None:
    inferer = cfg.get("inferer")
    if inferer is None:
        return
    overlap = _plain(inferer.get("overlap"))
    values = overlap if isinstance(overlap, list) else [overlap]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1 for v in values):
        raise MedsegError(f"inferer.overlap={overlap!r} must be a number in [0, 1): the fraction windows share")
    batch = inferer.get("sw_batch_size")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise MedsegError(f"inferer.sw_batch_size={batch!r} must be a whole number >= 1 (windows per network call)")
