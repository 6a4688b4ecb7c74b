"""Every option of every config group composes and instantiates into the real MONAI/torch object."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from medseg.data.transforms import augmentation
from tests.conftest import CONF_DIR, MIN_PATCH, SEGMENTATION_MODELS


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_groups_have_the_promised_options():
    assert {"unet3d", "segresnet", "unetr", "swinunetr", "dynunet", "attention_unet", "basic_unet"} <= set(options("model"))
    assert {"default", "fast", "gpu"} <= set(options("trainer"))
    assert "synthetic" in options("dataset") and "brats" in options("dataset")
    assert {"resnet18", "resnet50", "densenet121"} <= set(options("model"))


@pytest.mark.parametrize("model", SEGMENTATION_MODELS)
def test_every_model_builds_and_keeps_patch_shape(tiny_cfg, model):
    cfg = tiny_cfg(f"model={model}", *([MIN_PATCH[model]] if model in MIN_PATCH else []))
    net = instantiate(cfg.model).eval()
    x = torch.zeros(1, cfg.dataset.in_channels, *cfg.dataset.patch_size)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, cfg.dataset.num_classes, *cfg.dataset.patch_size)


@pytest.mark.parametrize("optimizer", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_every_optimizer_and_scheduler(tiny_cfg, optimizer, scheduler):
    cfg = tiny_cfg(f"optimizer={optimizer}", f"scheduler={scheduler}", "trainer.max_epochs=10")
    params = [torch.nn.Parameter(torch.ones(3))]
    opt = instantiate(cfg.optimizer)(params=params)
    sched = instantiate(cfg.scheduler)(optimizer=opt)
    lrs = []
    for _ in range(cfg.trainer.max_epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(lr >= 0 for lr in lrs) and max(lrs) <= cfg.optimizer.lr + 1e-12
    if scheduler in ("poly", "cosine"):
        assert lrs[-1] < 0.5 * max(lrs)  # decays over the run


CLASSIFICATION_LOSSES = {"ce", "bce"}


@pytest.mark.parametrize("loss", sorted(set(options("loss")) - CLASSIFICATION_LOSSES))
def test_every_segmentation_loss_handles_single_and_deep_supervised_outputs(tiny_cfg, loss):
    cfg = tiny_cfg(f"loss={loss}")
    loss_fn = instantiate(cfg.loss)
    # the pipeline yields float label maps: class indices, or one binary channel per region
    target = (torch.randint(0, 2, (2, 3, 8, 8, 8)) if "regions" in loss else torch.randint(0, 3, (2, 1, 8, 8, 8))).float()
    logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
    single = loss_fn(logits, target)
    deep = loss_fn([logits, torch.randn(2, 3, 4, 4, 4)], target)
    stacked = loss_fn(torch.stack([logits, torch.randn(2, 3, 8, 8, 8)], dim=1), target)  # DynUNet's training output
    assert single.ndim == 0 and torch.isfinite(single) and torch.isfinite(deep) and torch.isfinite(stacked)
    assert not torch.isclose(stacked, single)  # the second head counts
    single.backward()
    assert logits.grad is not None


@pytest.mark.parametrize("augment", sorted(set(options("augment")) - {"classification"}))
def test_every_augmentation_yields_patches(tiny_cfg, augment):
    cfg = tiny_cfg(f"augment={augment}", "dataset.num_samples=3")
    cached, random = augmentation(cfg.augment)
    image = torch.rand(1, 20, 40, 36)
    label = torch.zeros(1, 20, 40, 36)
    label[:, 5:15, 10:20, 10:20] = 1
    label[:, 2:6, 30:36, 20:30] = 2
    out = random(cached({"image": image, "label": label}))
    assert len(out) == 3
    for sample in out:
        assert tuple(sample["image"].shape[1:]) == tuple(cfg.dataset.patch_size)
        assert set(sample["label"].unique().tolist()) <= {0.0, 1.0, 2.0}


def test_inferer_uses_patch_size_as_roi(tiny_cfg):
    cfg = tiny_cfg("dataset.patch_size=[16,24,32]")
    inferer = instantiate(cfg.inferer)
    assert list(inferer.roi_size) == [16, 24, 32]
    out = inferer(torch.rand(1, 1, 40, 30, 35), lambda x: torch.cat([x, 1 - x], 1))
    assert out.shape == (1, 2, 40, 30, 35)


@pytest.mark.parametrize("loss", sorted(CLASSIFICATION_LOSSES))
def test_classification_losses(tiny_cfg, loss):
    cfg = tiny_cfg(f"loss={loss}")
    logits = torch.randn(4, 5, requires_grad=True)
    target = torch.randint(0, 2, (4, 5)).float() if loss == "bce" else torch.randint(0, 5, (4,))
    value = instantiate(cfg.loss)(logits, target)
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None


def test_classification_augment_is_empty_by_default_and_extensible(tiny_cfg):
    assert [len(c.transforms) for c in augmentation(tiny_cfg("augment=classification").augment)] == [0, 0]
    cfg = tiny_cfg("augment=classification", "+augment.random.flip={_target_: monai.transforms.RandFlipd, keys: image, prob: 1.0, spatial_axis: 1}")
    image = torch.arange(6.0).reshape(1, 2, 3)
    assert torch.equal(augmentation(cfg.augment)[1]({"image": image})["image"], image.flip(2))


def _readme_commands() -> list[tuple[str, list[str]]]:
    """``(entry, overrides)`` of every medseg command line in the README's code blocks."""
    import re
    import shlex

    text = (CONF_DIR.parent / "README.md").read_text()
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    commands = []
    for line in blocks.splitlines():
        line = line.split("  #")[0].strip()
        match = re.search(r"(?:python -m medseg\.|-m medseg\.)(train|predict|evaluate)\b(.*)", line)
        if match:
            words = [w for w in shlex.split(match[2]) if w != "-m"]
            # a sweep composes like its first value; the optuna search space is the sweeper's syntax
            words = [w if "(" in w or "," not in w.split("=", 1)[-1] or w.split("=", 1)[-1].startswith("[")
                     else w.split(",")[0] for w in words]
            commands.append((match[1], words))
    return commands


README_COMMANDS = _readme_commands()


@pytest.mark.parametrize("entry,overrides", README_COMMANDS, ids=[" ".join([e, *o])[:60] for e, o in README_COMMANDS])
def test_every_readme_command_composes(entry, overrides, tmp_path):
    """Every command line the README teaches still names config groups and keys that exist."""
    from medseg.core.config import compose

    overrides = [o.replace("<run>", "run").replace("<time>", "time") for o in overrides if "interval(" not in o]
    cfg = compose(entry, overrides, tmp_path)
    roots = [o.split("=", 1)[1] for o in overrides if o.startswith("dataset.root=")]
    placeholder = any("/path/" in o for o in overrides) or any(not Path(r).exists() for r in roots)
    if entry == "train" and not placeholder:  # a user's folder (ultrasound/, nnUNet_raw/...) is not here to read
        from omegaconf import OmegaConf

        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_readme_commands_were_found():
    entries = {e for e, _ in README_COMMANDS}
    assert entries == {"train", "predict", "evaluate"} and len(README_COMMANDS) >= 15
