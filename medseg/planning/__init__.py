"""Self-configuring recipes: fingerprint the data, plan the data-dependent values, merge the plan.

``apply_plan(cfg, overrides)`` is what ``medseg.train`` and ``medseg.plan`` call: with
``dataset.plan=auto`` it fingerprints the labelled cases (once: the result is kept), plans from
the fingerprint (once: the plan file is kept and may be edited) and writes the planned values
into the config, except those the command line set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from medseg.core.config import CONF_DIR
from medseg.core.errors import MedsegError
from medseg.core.folders import beside_data
from medseg.data import datalist
from medseg.data.loaders import resolve_task_dir
from medseg.planning.fingerprint import FINGERPRINT_FILE, load_or_compute
from medseg.planning.plan import (
    PLAN_FILE,
    backup_path,
    make_plan,
    merge,
    read_plan,
    table,
    user_sets_network,
    write_plan,
)
from medseg.planning.rules import network_divisor

log = logging.getLogger(__name__)

__all__ = ["apply_plan", "plan_files", "config_groups"]


def config_groups() -> set[str]:
    """Names of the config groups (``model``, ``dataset``...): choosing one is not setting a value."""
    return {p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()}


def command_line_overrides() -> list[str]:
    """The overrides of the running Hydra app (or of the last ``medseg.core.config.compose``)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def _labelled_cases(dataset: DictConfig) -> tuple[datalist.Datalist, list[dict[str, Any]]]:
    resolve_task_dir(dataset)
    data: datalist.Datalist = instantiate(dataset.source)
    if not data.cases:
        raise MedsegError(f"{data.root} lists no labelled training cases to plan from")
    cases = [{**c, "case": k} for k, c in data.cases.items()]
    cases += [{**c, "case": k} for k, c in (data.fixed_val or {}).items()]
    return data, cases


def _fixed(cfg: DictConfig, key: str, user: Sequence[str]) -> Any:
    """The config's value of ``key`` if the command line set it (to a value, not null), else None."""
    if any(o.split("=", 1)[0].lstrip("+~") == key for o in user):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
        return value
    return None


def _extra_divisor(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """What a network the plan does not shape (another model, or one the command line set) needs
    the patch to be a multiple of."""
    target = OmegaConf.select(cfg, "model._target_") or ""
    planned = target in ("monai.networks.nets.UNet", "monai.networks.nets.DynUNet")
    if planned and not user_sets_network(overrides, config_groups()):
        return 1
    return (network_divisor(cfg.model) or 1) if cfg.get("model") is not None else 1


def _planned_with(cfg: DictConfig, overrides: Sequence[str]) -> str:
    """What besides the files a plan depends on: changing any of these plans again."""
    settings = OmegaConf.to_container(cfg.planner, resolve=True) if cfg.get("planner") is not None else {}
    blob = json.dumps([settings, str(cfg.dataset.modality), _extra_divisor(cfg, overrides)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def plan_files(cfg: DictConfig, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    """The plan of ``cfg.dataset`` (made, or read as it was kept), its file and the fingerprint.

    Raises:
        MedsegError: a broken case (named by the fingerprint), an unreadable plan file.
    """
    dataset = cfg.dataset
    data, cases = _labelled_cases(dataset)
    folder = beside_data(data.root, cfg.paths.cache_dir, dataset.name)
    target = instantiate(dataset.target)
    fingerprint = load_or_compute(cases, int(dataset.in_channels), target.file_label_values(data.label_names),
                                  folder / FINGERPRINT_FILE)
    path = folder / PLAN_FILE
    planned_with = _planned_with(cfg, overrides)
    if path.is_file():
        plan = read_plan(path)
        made = plan.get("fingerprint", {})
        if made.get("key") == fingerprint["key"] and made.get("planned_with", planned_with) == planned_with:
            log.info("plan: %s", path)
            return plan, path, fingerprint
        backup = backup_path(path)
        shutil.copyfile(path, backup)
        log.warning("%s was planned for other data or settings (planner, modality, network): planning again "
                    "(the old file is kept as %s)", path, backup.name)
    plan = make_plan(fingerprint, str(dataset.modality), cfg.planner, extra_divisor=_extra_divisor(cfg, overrides))
    plan["fingerprint"]["planned_with"] = planned_with
    write_plan(plan, path, str(dataset.name))
    log.info("planned %s from %d cases: %s", dataset.name, fingerprint["cases"], path)
    return plan, path, fingerprint


def apply_plan(cfg: DictConfig, overrides: Sequence[str] | None = None, log_table: bool = True) -> dict[str, Any] | None:
    """Merges the dataset's plan into ``cfg`` (in place) as ``dataset.plan`` says; returns the plan.

    ``dataset.plan``: ``auto`` (fingerprint and plan once, then reuse), ``none``, or a plan file.
    Values set on the command line (``overrides``, default: the running app's) are kept; a
    command-line spacing or patch is planned around (the network's topology follows them).
    """
    mode = cfg.dataset.get("plan") or "none"
    if mode == "none":
        return None
    overrides = command_line_overrides() if overrides is None else list(overrides)
    if mode == "auto":
        plan, path, fingerprint = plan_files(cfg, overrides)
    else:
        path = Path(str(mode))
        if not path.is_file():
            raise MedsegError(f"dataset.plan={mode}: no such plan file; use auto, none or the path of a medseg_plan.yaml")
        plan, fingerprint = read_plan(path), None
    spacing, patch = _fixed(cfg, "dataset.spacing", overrides), _fixed(cfg, "dataset.patch_size", overrides)
    configuration = _fixed(cfg, "dataset.configuration", overrides)
    configuration = configuration if configuration in ("2d", "3d") else None
    if configuration is None and patch is not None:  # a patch given on the command line says which network it is for
        configuration = "2d" if len(patch) == 2 else "3d"
    extra = _extra_divisor(cfg, overrides)  # a network chosen after planning (model=segresnet) may need another multiple
    misfit = any(int(p) % extra for p in plan["dataset"].get("patch_size", []))
    other_configuration = configuration is not None and configuration != plan["dataset"].get("configuration", "3d")
    if (spacing is not None or patch is not None or misfit or other_configuration) and fingerprint is not None:
        planned_around = make_plan(fingerprint, str(cfg.dataset.modality), cfg.planner, spacing=spacing, patch=patch,
                                   extra_divisor=extra, configuration=configuration or plan["dataset"].get("configuration"))
        derived = ["configuration", "slice_axis", "patch_size", "batch_size", "num_samples", "rot90_axes", "mirror_axes"]
        if other_configuration:
            derived.append("spacing")  # the 2D configuration keeps each case's own spacing along its slices
        plan = {**plan, "network": planned_around["network"],
                "dataset": {**plan["dataset"], **{k: planned_around["dataset"][k] for k in derived}}}
    elif (spacing is not None or patch is not None or other_configuration) and fingerprint is None:
        log.warning("dataset.plan=%s is a file: the command line's spacing/patch/configuration are used as given and "
                    "the planned network is not re-derived around them", path)
    groups = config_groups()
    written = merge(cfg, plan, overrides, groups)
    kept = sorted({o.split("=", 1)[0].lstrip("+~") for o in overrides} - groups)
    if log_table:
        log.info("plan %s applied (the command line's %s kept):\n%s", path, ", ".join(kept) or "nothing",
                 table(plan, OmegaConf.select(cfg, "model._target_")))
    if not written:
        log.info("every planned value was set on the command line")
    return plan
