"""The package's shape, checked so it stays true: imports point down the layers, dataset configs
hold only data facts, benchmarks use the public helpers rather than the tests."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medseg"

# Bottom to top. A module may import its own layer and the layers below it, never one above.
LAYERS = ["core", "data", "planning", "metrics", "inference", "engine", "tasks", "entries"]


def layer_of(module: str) -> str:
    """``medseg.data.loaders`` -> ``data``; top-level modules (train, predict, ...) are entries."""
    parts = module.split(".")
    if parts[0] != "medseg":
        raise ValueError(module)
    if len(parts) == 1:
        return "entries"  # the package root re-exports the public API from every layer
    return parts[1] if parts[1] in LAYERS else "entries"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every medseg module ``path`` imports (top level, in functions, under TYPE_CHECKING alike)."""
    tree = ast.parse(path.read_text())
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "medseg"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "medseg":
                continue
            for alias in node.names:  # `from medseg.core import distributed` names a module
                candidate = f"{base}.{alias.name}"
                sub = ROOT / Path(*candidate.split("."))
                found.append((node.lineno, candidate if sub.with_suffix(".py").exists() or sub.is_dir() else base))
    return found


def upward_imports(root: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        src = layer_of(module_name(path))
        if path == PACKAGE / "__init__.py":
            continue
        for line, target in imported_modules(path):
            dst = layer_of(target)
            if LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{path.relative_to(ROOT)}:{line} ({src}) imports {target} ({dst})")
    return bad


def test_every_import_points_down_the_layers():
    assert upward_imports() == []


def test_layer_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a data module importing the engine is reported."""
    assert layer_of("medseg.data.loaders") == "data" and layer_of("medseg.train") == "entries"
    assert LAYERS.index(layer_of("medseg.engine.trainer")) > LAYERS.index(layer_of("medseg.metrics.dice"))
    fake = ROOT / "medseg" / "data" / "_layer_probe.py"
    fake.write_text("from medseg.engine import trainer\n")
    try:
        assert any("_layer_probe" in b for b in upward_imports())
    finally:
        fake.unlink()


def test_benchmarks_do_not_import_tests():
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "tests"], f"{path} imports test code"


DATASET_FILES = sorted((ROOT / "conf" / "dataset").rglob("*.yaml"))
# What a kind of task needs comes from conf/task/; a dataset may pick its task kind, nothing else.
NOT_DATA_GROUPS = ("/model", "/loss", "/augment", "/inferer", "/trainer", "/optimizer", "/scheduler")


@pytest.mark.parametrize("path", DATASET_FILES, ids=lambda p: str(p.relative_to(ROOT / "conf" / "dataset")))
def test_dataset_configs_hold_only_data_facts(path):
    text = path.read_text()
    assert "@package _global_" not in text, f"{path}: dataset configs live in the dataset package"
    config = yaml.safe_load(text) or {}
    for entry in config.get("defaults", []):
        if isinstance(entry, dict):
            for key in entry:
                group = key.removeprefix("override ").strip()
                assert not group.startswith(NOT_DATA_GROUPS), f"{path}: selects {group}; use the task group"
    for key in ("epochs", "max_minutes", "val_every", "optimized_metric", "stem_stride", "stem_no_pool"):
        assert key not in config, f"{path}: '{key}' is a recipe setting, not a data fact"


def test_recipe_groups_do_not_read_dataset_recipe_keys():
    """trainer/ and model/ read data facts from the dataset (channels, classes, patch), never a cadence."""
    for group in ("trainer", "model", "task"):
        for path in sorted((ROOT / "conf" / group).glob("*.yaml")):
            text = path.read_text()
            for key in ("dataset.epochs", "dataset.max_minutes", "dataset.val_every", "dataset.stem_"):
                assert key not in text, f"{path} reads {key}"


def _wall_clock_budgets(tree: ast.AST) -> list[tuple[str, int]]:
    """Test functions and fixtures that give a training a wall-clock budget without an injected
    clock: ``max_minutes=<number>``, or ``trainer=fast`` (the demo preset, capped at 2.5 minutes)
    without ``max_minutes=null`` (directly or through the shared ``TINY`` overrides)."""
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        budgets = [n for n in ast.walk(func) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                   and re.search(r"max_minutes=(?!null)\S", n.value)]
        strings = [n.value for n in ast.walk(func) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        uncapped = any("max_minutes=null" in v for v in strings) or any(
            isinstance(n, ast.Name) and n.id == "TINY" for n in ast.walk(func))
        budgets += [n for n in ast.walk(func) if isinstance(n, ast.Constant) and n.value == "trainer=fast" and not uncapped]
        uses_clock = any(isinstance(n, ast.keyword) and n.arg == "clock" for n in ast.walk(func))
        if budgets and not uses_clock:
            found.append((func.name, budgets[0].lineno))
    return found


def test_no_test_bounds_a_training_by_the_wall_clock():
    """A verdict that depends on how much work fits in N seconds fails at random on a busy machine:
    trainings in tests are bounded by epochs/steps; a time budget is tested with a fake clock."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name == Path(__file__).name:  # this file's strings are the check's own examples
            continue
        offenders += [f"{path.name}:{line} {name}" for name, line in _wall_clock_budgets(ast.parse(path.read_text()))]
    assert offenders == []


def test_wall_clock_check_catches_a_minutes_budget():
    bad = ast.parse('def trained():\n    cfg = compose_train(["trainer.max_minutes=1.5"], run)\n')
    fast = ast.parse('def demo_like():\n    cli("trainer=fast", "trainer.max_epochs=3")\n')
    good = ast.parse('def t():\n    train(compose_train(["trainer.max_minutes=2"], r), clock=FakeClock(10))\n'
                     'def u():\n    cfg = compose_train(["trainer=fast", "trainer.max_minutes=null"], r)\n'
                     'def v():\n    cli("trainer=fast", *TINY)\n')
    assert _wall_clock_budgets(bad) == [("trained", 2)] and _wall_clock_budgets(fast) == [("demo_like", 2)]
    assert _wall_clock_budgets(good) == []
