"""Data-set sources shared by every modality: CSV / JSONL manifests and class-per-folder trees."""
from __future__ import annotations

import csv
import hashlib
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
        row["path_as_written"] = row["path"]  # the held-out split hashes this, wherever the manifest sits
        if not os.path.isabs(row["path"]):
            row["path"] = str(path.parent / row["path"])
    return rows


def write_manifest(path, rows: list[dict]) -> Path:
    """Write rows (dicts with a ``path`` and any of label, text, split ...) as a CSV manifest; the
    columns are those of the first row. Returns the path."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def scan_folder(root, extensions: Iterable[str]) -> list[dict]:
    """Files under root with one of ``extensions`` (lower-case, with the dot), sorted. A file's
    ``class`` is its parent folder relative to root and its ``label`` that folder's index among the
    sorted class folders (-1 for files directly under root); its ``text`` (caption) is the content
    of a sidecar ``<name>.txt`` beside it, else empty."""
    root, extensions = Path(root), set(extensions)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    classes = sorted({p.parent.relative_to(root).as_posix() for p in files} - {"."})
    index = {c: k for k, c in enumerate(classes)}
    rows = []
    for p in files:
        folder = p.parent.relative_to(root).as_posix()
        row = {"path": str(p), "label": index.get(folder, -1), "class": folder}
        sidecar = p.with_suffix(".txt")
        if sidecar.is_file():
            try:
                row["text"] = " ".join(sidecar.read_text().split())
            except UnicodeDecodeError:
                raise DataError(f"{sidecar}: caption file is not UTF-8 text") from None
        rows.append(row)
    return rows


#: Share of a split-less folder or manifest held out as "val" (by file-name hash), when it has at
#: least MIN_FILES_TO_HOLD_OUT files; smaller ones train on every file.
HELD_OUT_FRACTION = 0.1
MIN_FILES_TO_HOLD_OUT = 10


def held_out_split(key: str, fraction: float = HELD_OUT_FRACTION) -> str:
    """"val" for about ``fraction`` of keys, else "train", by a hash of the key (a file's path relative
    to its folder or manifest): a file keeps its split on every machine, whatever else is added."""
    h = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2.0**64
    return "val" if h < fraction else "train"


def assign_splits(rows: list[dict], source, fraction: float = HELD_OUT_FRACTION) -> tuple[list[dict], dict | None]:
    """(every row with its ``split``, a record of how the split was made, or None when the data named it).

    A source where no row has a ``split`` value (a plain folder, a manifest without the column) is
    split here: ``held_out_split`` of each file's path relative to the folder, or as written in the
    manifest, sends about ``fraction`` to "val" (none below MIN_FILES_TO_HOLD_OUT files). A source
    where only some rows name a split is refused: its other rows would be dropped unseen."""
    named = [r for r in rows if r.get("split") not in (None, "")]
    if named and len(named) < len(rows):
        first = next(r for r in rows if r.get("split") in (None, ""))
        raise DataError(f"{source}: {len(rows) - len(named)} of {len(rows)} rows have no 'split' value "
                        f"(the first: {first['path']}); give every row one, or none")
    if named:
        return rows, None
    source = Path(source)
    base = source if source.is_dir() else source.parent
    hold = len(rows) >= MIN_FILES_TO_HOLD_OUT

    def key(row):  # a manifest's path as written; a folder's file relative to the folder
        return str(row["path_as_written"]) if "path_as_written" in row else Path(os.path.relpath(row["path"], base)).as_posix()

    rows = [{**r, "split": held_out_split(key(r), fraction) if hold else "train"} for r in rows]
    record = {"source": str(source), "files": len(rows),
              "train": sum(1 for r in rows if r["split"] == "train"),
              "val": sum(1 for r in rows if r["split"] == "val"), "held_out_fraction": fraction if hold else 0.0,
              "rule": ("'val' when the first 8 bytes of sha1(the path relative to the folder, or as written in the "
                       "manifest), as a fraction of "
                       f"2^64, are below {fraction}" if hold else
                       f"fewer than {MIN_FILES_TO_HOLD_OUT} files: all train, none held out"),
              "val_files": sorted(key(r) for r in rows if r["split"] == "val")}
    return rows, record


def select_split(rows, source, split: str | None,
                 fraction: float = HELD_OUT_FRACTION) -> tuple[list[dict], dict | None]:
    """(the rows of ``split``, a record of how the split was made, or None when the data named it);
    see :func:`assign_splits`. Shard rows (multidiff.shards) carry the split made when packing."""
    if split is None:
        return rows, None
    select = getattr(rows, "select_split", None)
    if select is not None:
        return select(split)
    rows, record = assign_splits(rows, source, fraction)
    return [r for r in rows if r["split"] == split], (None if record is None else {**record, "split": split})


def read_rows(source, extensions: Iterable[str], modality: str | None = None):
    """The rows of a data source: a shard folder (lazy :class:`multidiff.shards.ShardRows`; packed
    for ``modality`` when given), a CSV / JSONL manifest, or a folder of files with one of ``extensions``."""
    from .shards import ShardRows, ShardSet, is_shard_folder

    source = Path(source)
    if is_shard_folder(source):
        shards = ShardSet(source)
        packed = set(shards.header["extensions"])
        packed_for = shards.header.get("modality")
        if (modality and packed_for and packed_for != modality) or not packed <= set(extensions):
            raise DataError(f"{source}: the shards hold {shards.header.get('modality') or 'other'} files "
                            f"({', '.join(sorted(packed))}); this data set reads {', '.join(extensions)}")
        return ShardRows(shards)
    return read_manifest(source) if source.is_file() else scan_folder(source, extensions)


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


def check_labels(rows: list[dict], column: str, source) -> None:
    """DataError naming the manifest, its row and column at the first label that is not an integer
    (shard rows were checked when packed)."""
    if hasattr(rows, "select_split"):
        return
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
        packed = getattr(self.rows, "labels", None)  # shard rows: from the index, no row read
        if packed is not None and self.label_column == getattr(self.rows, "label_column", None):
            return packed
        return [row_label(r, self.label_column) for r in self.rows]

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1 if self.rows else 0

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

