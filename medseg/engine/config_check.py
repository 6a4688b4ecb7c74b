"""Config values checked before anything is cached or trained: one line per mistake, naming the key.

Types and ranges of the trainer and loader settings, the network's output channels against the
dataset's classes, and a patch size the network's down-sampling divides.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from medseg.core.errors import MedsegError
from medseg.planning.rules import network_divisor


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
    model, classes = cfg.get("model"), _select(cfg, "dataset.num_classes")
    if model is None:
        return
    for key in ("out_channels", "num_classes"):
        if key in model and model[key] != classes:
            raise MedsegError(f"model.{key}={model[key]} but dataset.num_classes={classes}: the network must output "
                              "one channel per class; drop the model override")
    patch = _select(cfg, "dataset.patch_size")
    if patch is None:
        return
    if any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in patch):
        raise MedsegError(f"dataset.patch_size={list(patch)} must be positive whole numbers of voxels")
    factor = network_divisor(model)
    if factor and any(p % factor for p in patch):
        fixed = [max(factor, int(round(p / factor)) * factor) for p in patch]
        raise MedsegError(f"dataset.patch_size={list(patch)} is not divisible by {factor}, the down-sampling of "
                          f"{str(model._target_).rsplit('.', 1)[-1]}: use e.g. dataset.patch_size=[{','.join(map(str, fixed))}]")
