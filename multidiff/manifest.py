"""Data-set sources shared by every modality: CSV / JSONL manifests and class-per-folder trees."""
from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path

from .errors import DataError


def read_manifest(path) -> list[dict]:
    """Rows of a CSV or JSONL manifest (a ``path`` column, and optionally label, text, split, ...);
    relative ``path`` entries are resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    try:
        if path.suffix == ".jsonl":
            rows = []
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{n}: invalid JSON ({err})") from None
        else:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not a text manifest ({err})") from None
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("path"):
            raise DataError(f"{path}: row {n} has no 'path' column/value")
        if not os.path.isabs(row["path"]):
            row["path"] = str(path.parent / row["path"])
    return rows


def scan_folder(root, extensions: Iterable[str]) -> list[dict]:
    """Files under root with one of ``extensions`` (lower-case, with the dot), sorted. A file's
    ``class`` is its parent folder relative to root and its ``label`` that folder's index among the
    sorted class folders (-1 for files directly under root)."""
    root, extensions = Path(root), set(extensions)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."})
    index = {c: k for k, c in enumerate(classes)}
    return [{"path": str(p), "label": index.get(p.parent.relative_to(root).as_posix(), -1),
             "class": p.parent.relative_to(root).as_posix()} for p in files]


def row_label(row: dict, column: str) -> int:
    """The integer label in ``column`` of a manifest row; -1 (none) when missing or empty."""
    value = row.get(column, "")
    if value in (None, ""):
        return -1
    try:
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not float(number).is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError):
        raise DataError(f"{row.get('path')}: column {column!r} holds {value!r}, not an integer class label") from None


def no_split_hint(source, split) -> str:
    """What to do when a split filter left nothing: a folder has no split column at all."""
    if split and Path(source).is_dir():
        return " (a folder has no 'split' column: set data.params.split=null, or use a manifest with one)"
    return ""


def check_labels(rows: list[dict], column: str, source) -> None:
    """DataError naming the manifest, its row and column at the first label that is not an integer."""
    for n, row in enumerate(rows, 1):
        try:
            row_label(row, column)
        except DataError:
            raise DataError(f"{source}: row {n} ({row.get('path')}): column {column!r} holds "
                            f"{row.get(column)!r}, not an integer class label") from None


class ManifestRows:
    """What the audio, video and shapes data sets of manifest rows share: ``rows`` (dicts),
    ``label_column`` and ``epoch`` are set by the subclass; labels, class count, length and the
    trainer's ``set_epoch`` hook come from here."""

    rows: list[dict]
    label_column: str = "label"
    epoch: int = 0

    @property
    def labels(self) -> list[int]:
        return [row_label(r, self.label_column) for r in self.rows]

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1 if self.rows else 0

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

