"""``multidiff pack DIR --out SHARDS``: a folder or manifest of a modality's files (its
``file_extensions``) as WebDataset tar shards with a random-access index (multidiff.shards), to train from with
``data.path=SHARDS`` in any recipe of that modality.

The split is made here, once: a manifest's ``split`` column is kept; a source without one holds out
about 10% as "val" by file-name hash (the rule of multidiff.manifest.assign_splits, recorded in the
shard header). Files that cannot be read or probed (the modality's ``probe``) are skipped and listed."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import DataError, InputError
from ..manifest import HELD_OUT_FRACTION, assign_splits, check_labels, read_manifest, scan_folder
from ..shards import SHARD_BYTES, SKIPPED, pack, verify
from .modality import MODALITIES, get_modality


def pack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="folder of files (class = sub-folder) or a .csv / .jsonl manifest")
    parser.add_argument("--out", required=True, help="new folder for the shards")
    parser.add_argument("--modality", default=None,
                        help="whose files to collect from a folder (default: the one whose extensions are found)")
    parser.add_argument("--shard-mb", type=float, default=SHARD_BYTES / 2**20,
                        help="start a new shard after this many MB (default %(default)g)")
    parser.add_argument("--label-column", default="label", help="manifest column of integer class labels")
    parser.add_argument("--held-out", type=float, default=HELD_OUT_FRACTION,
                        help="share held out as 'val' when the source has no split column (default %(default)g)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _modality_of(source: Path, name: str | None):
    get_modality("")  # load every modality's registry
    with_files = {m.name: m for m in MODALITIES.values() if m.file_extensions}
    if name is not None:
        if name not in with_files:
            raise InputError(f"--modality {name!r}: choose from {', '.join(sorted(with_files))}")
        return with_files[name]
    if source.is_file():
        suffixes = {Path(r["path"]).suffix.lower() for r in read_manifest(source)}
    else:
        suffixes = {p.suffix.lower() for p in source.rglob("*") if p.is_file()}
    found = sorted(m.name for m in with_files.values() if suffixes & set(m.file_extensions))
    if len(found) != 1:
        raise InputError(f"{source}: " + (f"files of several modalities ({', '.join(found)}); name one with --modality"
                                          if found else f"no files of any modality ({', '.join(sorted(with_files))})"))
    return with_files[found[0]]


def pack_run(args) -> int:
    source, out = Path(args.source), Path(args.out)
    if not source.exists():
        raise FileNotFoundError(f"{source} does not exist")
    if not 0 <= args.held_out < 1:
        raise InputError(f"--held-out must be in [0, 1), got {args.held_out}")
    if not args.shard_mb > 0:
        raise InputError(f"--shard-mb must be positive, got {args.shard_mb}")
    modality = _modality_of(source, args.modality)
    rows = read_manifest(source) if source.is_file() else scan_folder(source, modality.file_extensions)
    if not rows:
        raise DataError(f"{source}: no {modality.name} files ({', '.join(modality.file_extensions)})")
    check_labels(rows, args.label_column, source)
    rows, record = assign_splits(rows, source, args.held_out)
    header = pack(rows, out, source=source, split_record=record, probe=modality.probe,
                  shard_bytes=int(args.shard_mb * 2**20), label_column=args.label_column, modality=modality.name,
                  progress=not args.no_progress)
    verify(out)
    skipped = set(json.loads((out / SKIPPED).read_text()))
    counts = {}
    for r in rows:
        if str(r["path"]) not in skipped:
            counts[r["split"]] = counts.get(r["split"], 0) + 1
    print(f"packed {header['count']} {modality.name} files ({header['bytes'] / 2**20:.1f} MB) into "
          f"{len(header['shards'])} shards in {out}: " + ", ".join(f"{v} {k or '(no split)'}" for k, v in counts.items()))
    if header["skipped"]:
        skipped = json.loads((out / SKIPPED).read_text())
        print(f"skipped {len(skipped)} unreadable files (listed in {out / SKIPPED}; the first: {next(iter(skipped.values()))})")
    print(f"train with: multidiff train RECIPE data.path={out}")
    (out / "pack_command.json").write_text(json.dumps({"argv": ["multidiff", "pack", *getattr(args, "argv", [])]}))
    return 0
