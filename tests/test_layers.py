"""The import layers (pyproject.toml, checked by `lint-imports` in `make lint`) cover the tree."""

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).parents[1]


def _layer_modules() -> set[str]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    return {name.strip("() ") for layer in layers for name in re.split(r"[|:]", layer)}


def _top_level_modules(package: str) -> set[str]:
    """`tasks.x` for every module file and subpackage directly under the package."""
    folder = REPO / package
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in folder.glob("*/__init__.py")}
    return {f"{package}.{name}" for name in names}


def test_every_module_of_flows_and_tasks_has_its_place_in_the_layers() -> None:
    missing = (_top_level_modules("flows") | _top_level_modules("tasks")) - _layer_modules()
    assert not missing, f"give these a layer in pyproject.toml [tool.importlinter]: {missing}"


def test_the_layers_name_only_modules_that_exist_or_are_marked_not_yet_there() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    required = {
        name.strip()
        for layer in layers
        for name in re.split(r"[|:]", layer)
        if not name.strip().startswith("(")
    }
    present = _top_level_modules("flows") | _top_level_modules("tasks")
    assert required <= present, f"layers name modules that are not there: {required - present}"
