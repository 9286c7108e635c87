"""Starter recipes shipped in the package, named without a path: ``multidiff train audio
data.path=DIR`` trains on your own folder of files; ``multidiff recipes`` lists them. The recipes of
a clone's ``recipes/`` folder (spoken digits, Moving MNIST, procedural shapes ...) are named by path."""
from __future__ import annotations

import argparse
from pathlib import Path

FOLDER = Path(__file__).parent


def packaged_recipes() -> dict[str, Path]:
    """{name: path} of the recipes in the package."""
    return {p.stem: p for p in sorted(FOLDER.glob("*.yaml"))}


def packaged_recipe(name: str) -> Path | None:
    """The packaged recipe called ``name`` (a bare name, no folder or extension), else None."""
    if "/" in name or "\\" in name or name.endswith((".yaml", ".yml")):
        return None
    return packaged_recipes().get(name)


def summary(path: Path) -> str:
    """The first comment line of a recipe: what it trains."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def recipes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="print this recipe's YAML instead of the list")


def recipes_run(args: argparse.Namespace) -> int:
    recipes = packaged_recipes()
    if args.name:
        if args.name not in recipes:
            raise FileNotFoundError(f"no packaged recipe {args.name!r}; known: {', '.join(recipes)}")
        print(recipes[args.name].read_text(), end="")
        return 0
    width = max(map(len, recipes))
    for name, path in recipes.items():
        print(f"{name:<{width}}  {summary(path)}")
    print("\ntrain on your own folder: multidiff train NAME data.path=DIR (multidiff recipes NAME prints one)")
    return 0
