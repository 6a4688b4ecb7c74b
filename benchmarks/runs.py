"""What the real-data benchmarks share: recorded runs (JSONL), medseg runs through its own entry
points, and a time-budgeted training loop for the hand-wired peers.

Every recipe trains for the same wall-clock budget on this machine, one run at a time, and writes
predictions of the held-out cases to files that one scoring function reads; medseg runs exactly as
a user types it (``python -m medseg.train ...`` then ``python -m medseg.predict ...`` on
``checkpoints/last.pt``), each in its own process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]


def record(path: Path, result: dict[str, Any]) -> None:
    """Appends one run to a JSONL log as soon as it is measured (a stopped benchmark keeps it)."""
    print(json.dumps(result), flush=True)
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")


def recorded(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def latest(runs: Iterable[dict[str, Any]], **match: Any) -> dict[tuple, dict[str, Any]]:
    """The newest run of each (recipe, fold) among runs whose fields equal ``match``."""
    out = {}
    for r in runs:
        if all(r.get(k) == v for k, v in match.items()):
            out[(r["recipe"], r["fold"])] = r
    return out


def run_medseg(train_overrides: list[str], held_out_images: list[str], work: Path,
               predict_overrides: Iterable[str] = ()) -> dict[str, Any]:
    """``python -m medseg.train <overrides>`` then ``python -m medseg.predict`` of ``checkpoints/last.pt``
    (the model at the end of the budget: no selection on held-out cases) on the held-out images.

    Returns:
        ``{"pred": folder of predictions, "epochs", "train_minutes"}``.
    """
    run_dir, inputs, out = work / "run", work / "inputs", work / "pred"
    subprocess.run([sys.executable, "-m", "medseg.train", *train_overrides, f"hydra.run.dir={run_dir}"],
                   cwd=ROOT, check=True)
    inputs.mkdir(parents=True)
    for image in held_out_images:
        (inputs / Path(image).name).symlink_to(image)
    subprocess.run([sys.executable, "-m", "medseg.predict", f"ckpt={run_dir / 'checkpoints' / 'last.pt'}",
                    f"input={inputs}", f"output={out}", "save_overlays=false", f"hydra.run.dir={work / 'predict'}",
                    *predict_overrides], cwd=ROOT, check=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"pred": out, "epochs": metrics["epochs"], "train_minutes": round(metrics["train_minutes"], 2)}


def train_for(minutes: float, loader: Iterable, step: Callable[[Any], float]) -> dict[str, Any]:
    """Runs ``step(batch)`` over epochs of ``loader`` until ``minutes`` of wall clock have passed."""
    steps, epochs, start = 0, 0, time.monotonic()
    deadline = start + minutes * 60
    while time.monotonic() < deadline:
        for batch in loader:
            step(batch)
            steps += 1
            if time.monotonic() >= deadline:
                break
        else:
            epochs += 1
    return {"steps": steps, "epochs": epochs, "train_minutes": round((time.monotonic() - start) / 60, 2)}
