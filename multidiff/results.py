"""Result files and the README tables built from them (docs/evaluation.md).

``multidiff eval --result FILE`` writes one JSON record per scored model. Tables are declared in
``recipes/<modality>/results/tables.yaml``::

    shapes-procedural:                       # the table's name, as in the README markers
      readme: recipes/shapes/README.md       # the file that shows it
      columns:
        - {metric: 1nna_cd, header: 1-NNA-CD, format: .3f}
      rows:
        - label: procedural.yaml, guided (w 1.15 chosen on the validation split)
          results: recipes/shapes/results/procedural/test-guided-seed*.json   # one file per training seed
          target: {metric: 1nna_cd, at_most: 0.65}                           # optional
          prefix: methods.closing.       # optional: metric names as dotted paths from the record's root

and ``multidiff results`` writes each table between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` in its README: per column the mean and the sample standard deviation
over the files (the training seeds), the seeds, the target verdict (met only when the mean meets
it) and the command of the first file. ``multidiff results --check`` changes nothing and exits 1
when a table is missing, stale, or names a result file that does not exist, so no number in a
marked table can be typed by hand (tests/test_results.py runs it on the repository).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import InputError

ROOT_MARKERS = ("pyproject.toml", "recipes")


def write_result(path: Path, record: dict) -> None:
    """A result record as JSON, atomically; NaN is refused (undefined metrics are null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def code_version() -> dict:
    """multidiff's version and, in a git checkout, the commit (with ``-dirty`` for local changes)."""
    from . import __version__

    out: dict[str, Any] = {"version": __version__, "git_commit": None}
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=10)
            out["git_commit"] = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out


# ------------------------------------------------------------------------------ tables
def _load_yaml(path: Path) -> dict:
    import yaml

    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of table names")
    return data


def table_specs(root: Path) -> dict[str, dict]:
    """Every table declared under ``root/recipes/*/results/tables.yaml``, by name."""
    specs: dict[str, dict] = {}
    for spec_file in sorted(root.glob("recipes/*/results/tables.yaml")):
        for name, spec in _load_yaml(spec_file).items():
            if name in specs:
                raise InputError(f"{spec_file}: table {name!r} is declared twice")
            for key in ("readme", "columns", "rows"):
                if key not in spec:
                    raise InputError(f"{spec_file}: table {name!r} has no {key!r}")
            specs[name] = {**spec, "_file": spec_file}
    return specs


def read_results(pattern: str, root: Path) -> list[dict]:
    """The result records matching ``pattern`` (relative to root), by training seed."""
    files = sorted(glob.glob(str(root / pattern)))
    records = []
    for f in files:
        try:
            record = json.loads(Path(f).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"{f}: not a result file ({err})") from None
        record["_file"] = os.path.relpath(f, root)
        records.append(record)
    return sorted(records, key=lambda r: (r.get("training_seed") is None, r.get("training_seed"), r["_file"]))


def _metric(record: dict, name: str) -> float:
    """``name`` in the record's metrics, or a dotted path from the record's root (methods.closing.chamfer)."""
    value: Any = record.get("metrics", {}).get(name)
    if value is None and "." in name:
        value = record
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise InputError(f"{record['_file']}: metric {name!r} is missing or undefined")
    return float(value)


def summarise(values: list[float], fmt: str) -> str:
    """"mean ± std" over seeds (sample std); a single value alone."""
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


#: training seeds a target needs before it can be called met (docs/evaluation.md)
SEEDS_FOR_A_TARGET = 3


def _target_text(target: dict, values: list[float]) -> str:
    mean = statistics.fmean(values)
    if "at_most" in target:
        bound, ok, sign = target["at_most"], mean <= target["at_most"], "<="
    elif "at_least" in target:
        bound, ok, sign = target["at_least"], mean >= target["at_least"], ">="
    else:
        raise InputError(f"target {target!r} needs at_most or at_least")
    if len(values) < SEEDS_FOR_A_TARGET:  # the mean may still move either way
        return (f"{target['metric']} {sign} {bound}: {'not met yet' if ok else 'not met so far'} ({len(values)} "
                f"of the {SEEDS_FOR_A_TARGET} training seeds measured)")
    return f"{target['metric']} {sign} {bound}: {'met' if ok else 'not met'}"


def render_table(name: str, spec: dict, root: Path) -> str:
    """The markdown table of one spec, from its result files."""
    columns = spec["columns"]
    header = ["setting", "seeds"] + [c.get("header", c["metric"]) for c in columns]
    has_target = any("target" in r for r in spec["rows"])
    if has_target:
        header.append("target")
    header.append("command (first seed)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in spec["rows"]:
        records = read_results(row["results"], root)
        if not records:
            raise InputError(f"{spec['_file']}: table {name!r}, row {row['label']!r}: no result file matches "
                             f"{row['results']}")
        cells = [row["label"], ", ".join("-" if r.get("training_seed") is None else str(r["training_seed"])
                                         for r in records)]
        for c in columns:
            name = row.get("prefix", "") + c["metric"]
            try:
                cells.append(summarise([_metric(r, name) for r in records], c.get("format", ".4g")))
            except InputError:
                if not c.get("optional"):  # a column marked optional may be missing from some rows' files
                    raise
                cells.append("n/a")
        if has_target:
            target = row.get("target")
            cells.append(_target_text(target, [_metric(r, row.get("prefix", "") + target["metric"]) for r in records])
                         if target else "")
        command = records[0].get("command") or ""
        cells.append(f"`{command}`" if command else "")
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    files = sorted({r["_file"] for row in spec["rows"] for r in read_results(row["results"], root)})
    lines.append("")
    lines.append(f"Mean ± sample standard deviation over the training seeds; written by `multidiff results` from "
                 f"{len(files)} result files ({os.path.dirname(files[0])}/).")
    return "\n".join(lines)


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- results:{name} -->", f"<!-- /results:{name} -->"


def update(root: Path, check: bool = False) -> list[str]:
    """Write (or with ``check`` compare) every declared table; returns the problems found."""
    problems = []
    by_readme: dict[Path, list[tuple[str, dict]]] = {}
    for name, spec in table_specs(root).items():
        by_readme.setdefault(root / spec["readme"], []).append((name, spec))
    for readme, tables in by_readme.items():
        if not readme.is_file():
            problems.append(f"{readme}: no such file (named by a results table)")
            continue
        text = original = readme.read_text()
        for name, spec in tables:
            start, end = _markers(name)
            if start not in text or end not in text:
                problems.append(f"{readme}: no {start} ... {end} markers for table {name!r}")
                continue
            try:
                table = render_table(name, spec, root)
            except InputError as err:
                problems.append(str(err))
                continue
            block = f"{start}\n{table}\n{end}"
            pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
            text = pattern.sub(lambda _, block=block: block, text, count=1)
        if text != original:
            if check:
                problems.append(f"{readme}: tables are stale; run `multidiff results`")
            else:
                readme.write_text(text)
    for readme in root.glob("**/*.md"):  # a marker with no declared table is a hand-made table
        if ".venv" in readme.parts:
            continue
        for name in re.findall(r"^<!-- results:([\w.-]+) -->$", readme.read_text(), re.MULTILINE):
            if name not in table_specs(root):
                problems.append(f"{readme}: table {name!r} has markers but no declaration in recipes/*/results/tables.yaml")
    return problems


def find_root(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if all((folder / m).exists() for m in ROOT_MARKERS):
            return folder
    raise InputError(f"{here}: not inside a multidiff checkout (no pyproject.toml and recipes/ above it)")


def results_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale or "
                                                             "a result file is missing")
    parser.add_argument("--root", default=None, help="the checkout (default: the one around the current folder)")


def results_run(args: argparse.Namespace) -> int:
    root = Path(args.root) if args.root else find_root()
    problems = update(root, check=args.check)
    for p in problems:
        print(f"multidiff results: {p}", file=sys.stderr)
    if not problems:
        n = len(table_specs(root))
        print(f"{n} results table(s) {'up to date' if args.check else 'written'}")
    return 1 if problems else 0
