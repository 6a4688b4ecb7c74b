"""Cross-validation table from the run folders of a fold sweep.

    python -m medseg.train -m dataset=msd/spleen dataset.fold=0,1,2,3,4 hydra.sweep.dir=outputs/cv/spleen
    python -m medseg.cv_summary outputs/cv/spleen

Reads every ``metrics.json`` (best validation of each run) and ``split.json`` (its fold) below the
given folders, groups runs by the command-line overrides that differ between them, fold aside (so
a sweep over models x folds gives one row per model), and writes ``cv_summary.csv`` and ``cv_summary.md``
(mean ± sample standard deviation over folds, per class) into the first folder. When the folds were
trained with ``trainer.export_validation=true`` (``make cv`` does), every setting and every pair of
settings (an ensemble) is also scored from the held-out probabilities, as nnU-Net's
``find_best_configuration`` does, and the best is named with the ``medseg.predict`` command that
runs it (``cv_summary.md``, ``cv_choice.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medseg.core.errors import MedsegError, exit_on_user_error
from medseg.core.folders import ensure_writable
from medseg.metrics.ensembles import VALIDATION_DIR, score_settings


def _overrides(run_dir: Path) -> list[str]:
    """The run's command-line overrides without the fold and Hydra's own keys."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) or [] if overrides_file.is_file() else []
    return [o for o in overrides if not o.split("=")[0].lstrip("+~").startswith(("dataset.fold", "hydra."))]


RUN_TRACES = ("train.log", ".hydra", "checkpoints", "split.json", ".medseg.lock")  # what a started run leaves


def unfinished_runs(folders: list[Path]) -> list[Path]:
    """Run folders below ``folders`` that a training started in but that hold no ``metrics.json``:
    a fold that crashed, or is still running."""
    found = set()
    for folder in folders:
        for trace in RUN_TRACES:
            for path in folder.rglob(trace):
                run = path.parent
                if run != folder and ".hydra" not in run.parts and not (run / "metrics.json").is_file():
                    found.add(run)
    return sorted(found)


def collect_runs(folders: list[Path]) -> list[dict[str, Any]]:
    """One record per finished run below ``folders``: setting, fold, best-validation metrics, folder."""
    runs = []
    for folder in folders:
        if not folder.is_dir():
            raise MedsegError(f"{folder} is not a folder; pass the sweep folder (hydra.sweep.dir) of a fold sweep")
        for metrics_file in sorted(folder.rglob("metrics.json")):
            run_dir = metrics_file.parent
            split_file = run_dir / "split.json"
            try:
                best = json.loads(metrics_file.read_text())["best"]
                fold = json.loads(split_file.read_text()).get("fold") if split_file.is_file() else None
            except (json.JSONDecodeError, KeyError) as err:
                raise MedsegError(f"{metrics_file} is not a medseg metrics file ({err}); delete it or rerun that fold") from err
            runs.append({"overrides": _overrides(run_dir), "fold": fold, "metrics": best["metrics"], "run": str(run_dir)})
    if not runs:
        raise MedsegError(f"no metrics.json below {', '.join(map(str, folders))}: have the fold runs finished?")
    return runs


def setting_of(run: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """A run's setting: the overrides that tell it apart from the other runs (fold aside)."""
    common = set.intersection(*(set(r["overrides"]) for r in runs))
    return " ".join(o for o in run["overrides"] if o not in common) or "all runs"


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting: folds, and mean/std of every metric over its folds.

    Raises:
        MedsegError: two runs of one setting claim the same fold (two sweeps mixed in one folder).
    """
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[setting_of(run, runs)].append(run)
    table = []
    for setting, members in groups.items():
        folds = [m["fold"] for m in members]
        duplicated = sorted({f for f in folds if folds.count(f) > 1}, key=str)
        if duplicated:
            clash = [m["run"] for m in members if m["fold"] == duplicated[0]]
            raise MedsegError(f"fold {duplicated[0]} appears twice for '{setting}': {clash[0]} and {clash[1]}; summarise one sweep at a time")
        names = list(members[0]["metrics"])
        values = {n: np.array([m["metrics"].get(n, np.nan) for m in members], dtype=float) for n in names}
        row: dict[str, Any] = {"setting": setting, "folds": sorted(folds, key=str)}
        for name, v in values.items():
            row[name] = (float(np.nanmean(v)), float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else float("nan"))
        table.append(row)
    return table


def missing_folds(table: list[dict[str, Any]]) -> list[str]:
    """Settings that lack a fold another setting of the sweep has: "<setting>: fold k"."""
    every = {f for row in table for f in row["folds"]}
    return [f"{row['setting']}: fold {f}" for row in table for f in sorted(every - set(row["folds"]), key=str)]


def _cell(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}" if np.isfinite(std) else f"{mean:.4f} ± n/a"


def to_markdown(table: list[dict[str, Any]]) -> str:
    metrics = [k for k in table[0] if k not in ("setting", "folds")]
    lines = ["| setting | folds | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for row in table:
        cells = [_cell(*row[m]) for m in metrics]
        lines.append(f"| {row['setting']} | {','.join(map(str, row['folds']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def group_runs(runs: list[dict[str, Any]]) -> dict[str, list[Path]]:
    """``{setting: [run folders]}``, settings named as in the table."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for run in runs:
        groups[setting_of(run, runs)].append(Path(run["run"]))
    return dict(groups)


def choose(runs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Settings and pairwise ensembles scored from the runs' exported validation probabilities
    (``medseg.metrics.ensembles``), best first; None when a run has none (trained without
    ``trainer.export_validation=true``)."""
    if not all((Path(r["run"]) / VALIDATION_DIR / "cases.json").is_file() for r in runs):
        return None
    groups = group_runs(runs)
    ranked = score_settings(groups)
    for entry in ranked:
        entry["checkpoints"] = [str(run / "checkpoints" / "last.pt") for m in entry["members"] for run in groups[m]]
    return ranked


def choice_markdown(ranked: list[dict[str, Any]]) -> str:
    best = ranked[0]
    lines = ["", "## Configurations and ensembles (held-out cases of every fold, each in its input grid)", "",
             "| candidate | mean foreground Dice | cases |", "|---|---|---|"]
    lines += [f"| {' + '.join(r['members'])} | {r['dice']:.4f} | {r['cases']} |" for r in ranked]
    checkpoints = ",".join(best["checkpoints"])
    lines += ["", f"**Best: {' + '.join(best['members'])}** (mean foreground Dice {best['dice']:.4f}); predict with it:", "",
              f"    python -m medseg.predict ckpt=[{checkpoints}] input=scans/ output=preds/", ""]
    return "\n".join(lines)


def write(table: list[dict[str, Any]], folder: Path, ranked: list[dict[str, Any]] | None = None) -> None:
    metrics = [k for k in table[0] if k not in ("setting", "folds")]
    with open(folder / "cv_summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["setting", "folds", *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))])
        for row in table:
            w.writerow([row["setting"], " ".join(map(str, row["folds"])), *(x for m in metrics for x in row[m])])
    (folder / "cv_summary.md").write_text(to_markdown(table) + (choice_markdown(ranked) if ranked else ""))
    if ranked:
        (folder / "cv_choice.json").write_text(json.dumps({"best": ranked[0], "candidates": ranked}, indent=2))


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folder(s) holding the fold runs")
    parser.add_argument("--partial", action="store_true",
                        help="summarise the finished runs even if some folds crashed, are still running or are missing")
    args = parser.parse_args(argv)
    runs = collect_runs(args.folders)
    table = summarize(runs)
    gaps = [f"{run}: no metrics.json (crashed or still running)" for run in unfinished_runs(args.folders)]
    gaps += [f"{gap} has no finished run" for gap in missing_folds(table)]
    for gap in gaps:
        print(f"missing: {gap}", file=sys.stderr)
    if gaps and not args.partial:
        raise MedsegError(f"{len(gaps)} fold run(s) without results, first {gaps[0]}; wait for or rerun them, "
                          "or pass --partial to summarise the finished ones only")
    ensure_writable(args.folders[0], "copy the sweep folder somewhere writable")
    ranked = choose(runs)
    write(table, args.folders[0], ranked)
    sys.stdout.write(to_markdown(table) + (choice_markdown(ranked) if ranked else ""))
    print(f"written: {args.folders[0] / 'cv_summary.csv'}, {args.folders[0] / 'cv_summary.md'}")


if __name__ == "__main__":
    main()
