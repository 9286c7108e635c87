"""Sharded data sets: WebDataset tar shards with a random-access index, for corpora that do not fit
in memory (``multidiff pack DIR --out SHARDS``, then ``data.path=SHARDS`` in any recipe).

A shard folder holds

* ``shard-000000.tar``, ... : plain tar files in the WebDataset layout (webdataset, wids and
  stable-audio-tools read them as they are): each sample is two members sharing a key,
  ``<key>.<ext>`` (the original file's bytes: .wav, .mp4, .obj ...) and ``<key>.json`` (its manifest
  row: path as written, label, class, text, split, and what packing probed, e.g. a video's duration);
* ``index.npy``: one fixed-size record per sample (shard, byte offsets and sizes of both members,
  label, split code, duration, rate), memory-mapped when read, so a process holds no per-sample
  Python objects whatever the corpus size;
* ``shards.json``: the header (count, shards, split names, classes, the held-out split rule, how
  many files were skipped while packing); ``val_files.json`` and ``skipped.json`` beside it list
  the held-out files and the skipped ones with their reasons.

Training reads the shards as a map-style data set (as wids does): sample k is one ``pread`` of its
bytes at the indexed offset, decoded in the DataLoader worker that asks for it. So the trainer's
position stream (multidiff.train.data) works unchanged: every process reads the positions of its
share of each global batch from any shard, and resuming at any sample for any process count is
exact. Shards must sit on a file system with random access (local disk, NFS, a mounted bucket).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

HEADER = "shards.json"
INDEX = "index.npy"
VAL_FILES = "val_files.json"  # the held-out files of a split made when packing
SKIPPED = "skipped.json"      # files packing could not read: path -> reason
FORMAT = "multidiff-shards"
VERSION = 1
#: A new shard starts once the current one holds this many bytes (WebDataset's usual 0.1-1 GB).
SHARD_BYTES = 256 * 2**20

INDEX_DTYPE = np.dtype([("shard", "<i4"), ("offset", "<i8"), ("size", "<i8"), ("meta_offset", "<i8"),
                        ("meta_size", "<i4"), ("label", "<i8"), ("split", "<i2"), ("duration", "<f8"),
                        ("rate", "<f8"), ("ext", "<i2")])


def is_shard_folder(path) -> bool:
    """True for a folder written by :func:`pack` (it holds shards.json)."""
    return Path(path).is_dir() and (Path(path) / HEADER).is_file()


@dataclass(frozen=True)
class Member:
    """One file inside a shard: what a decoder reads instead of a path. ``name`` names it in messages
    (``SHARDS/shard-000003.tar:000001234.wav``, the original path in brackets)."""

    shard: str
    offset: int
    size: int
    ext: str
    name: str
    error: str = ""  # why the member cannot be used (its .json member is unreadable): read() raises it

    def read(self) -> bytes:
        if self.error:
            raise OSError(self.error)
        with open(self.shard, "rb") as f:
            data = os.pread(f.fileno(), self.size, self.offset)
        if len(data) != self.size:
            raise OSError(f"{self.name}: the shard ends {self.size - len(data)} bytes early (truncated copy?)")
        return data

    def open(self) -> io.BytesIO:
        """The member's bytes as a file object (with a ``name`` ending in its extension, as decoders
        that pick a format by name expect)."""
        f = io.BytesIO(self.read())
        f.name = f"member{self.ext}"
        return f

    def cache_key(self) -> str:
        """Identifies the bytes for on-disk decode caches (the shard's size and time stamp included)."""
        stat = os.stat(self.shard)
        return f"{os.path.abspath(self.shard)}|{stat.st_mtime_ns}|{stat.st_size}|{self.offset}|{self.size}"


def cache_key(source) -> str:
    """What identifies a file's bytes for on-disk decode caches: its absolute path, time stamp and
    size, or a shard member's place in its shard."""
    if isinstance(source, Member):
        return source.cache_key()
    stat = os.stat(source)
    return f"{os.path.abspath(source)}|{stat.st_mtime_ns}|{stat.st_size}"


def packed_from(path):
    """The manifest or folder a shard folder was packed from, when it still exists (evaluation
    finds its judges and held-out splits beside it); any other path as it is."""
    if path is None or not is_shard_folder(path):
        return path
    try:
        source = json.loads((Path(path) / HEADER).read_text()).get("source")
    except (OSError, json.JSONDecodeError):
        return path
    return source if source and Path(source).exists() else path


# ------------------------------------------------------------------------------------- reading
class ShardSet:
    """An opened shard folder: ``len``, ``member(k)``, ``meta(k)``; the index is memory-mapped."""

    def __init__(self, folder):
        folder = Path(folder)
        try:
            header = json.loads((folder / HEADER).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"{folder / HEADER}: not a readable shard header ({err})") from None
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise DataError(f"{folder / HEADER}: not a {FORMAT} v{VERSION} header (written by another tool or version)")
        try:
            index = np.load(folder / INDEX, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DataError(f"{folder / INDEX}: cannot read the shard index ({err})") from None
        if index.dtype != INDEX_DTYPE or len(index) != header["count"]:
            raise DataError(f"{folder / INDEX}: {len(index)} records of {index.dtype}, the header says "
                            f"{header['count']} of {INDEX_DTYPE}")
        missing = [s for s in header["shards"] if not (folder / s).is_file()]
        if missing:
            raise DataError(f"{folder}: {len(missing)} shard files are missing (the first: {missing[0]})")
        self.folder, self.header, self.index = folder, header, index
        self.shards = [str(folder / s) for s in header["shards"]]
        self.splits: list[str] = list(header["splits"])

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self):  # a DataLoader worker started by spawn re-maps the index instead of copying it
        return {k: v for k, v in self.__dict__.items() if k != "index"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.index = np.load(self.folder / INDEX, mmap_mode="r")

    def member(self, k: int) -> Member:
        r = self.index[k]
        shard = self.shards[int(r["shard"])]
        ext = self.header["extensions"][int(r["ext"])]
        return Member(shard, int(r["offset"]), int(r["size"]), ext, f"{shard}:{k:09d}{ext}")

    def meta(self, k: int) -> dict:
        r = self.index[k]
        shard = self.shards[int(r["shard"])]
        with open(shard, "rb") as f:
            raw = os.pread(f.fileno(), int(r["meta_size"]), int(r["meta_offset"]))
        if len(raw) != int(r["meta_size"]):
            raise DataError(f"{shard}: the shard ends before sample {k}'s .json member (truncated copy?)")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{shard}: sample {k}'s .json member is unreadable ({err})") from None


class ShardRows(Sequence):
    """The manifest rows of some samples of a shard folder, built on access (nothing per sample is
    held in memory): ``rows[k]`` is the packed row with ``path`` (the member, named), ``member``
    (a :class:`Member` for the decoders), ``label``, ``split`` and, for video, ``_duration`` / ``_rate``."""

    def __init__(self, shards: ShardSet, indices: np.ndarray | None = None, split_record: dict | None = None):
        self.shards = shards
        self.indices = np.arange(len(shards), dtype=np.int64) if indices is None else indices
        self.split_record = split_record
        self.label_column = shards.header.get("label_column", "label")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(len(self)))]
        i = int(self.indices[k])
        r = self.shards.index[i]
        member = self.shards.member(i)
        try:
            row = self.shards.meta(i)
        except (OSError, DataError) as err:  # the decoders skip and count it, as any unreadable file
            row, member = {}, Member(member.shard, member.offset, member.size, member.ext, member.name, str(err))
        written = row.get("path_as_written")
        row.update({"path": f"{member.name} ({written})" if written else member.name,
                    "member": member, "label": int(r["label"]), "split": self.shards.splits[int(r["split"])]})
        row["_duration"] = float(r["duration"]) if np.isfinite(r["duration"]) else None
        if np.isfinite(r["rate"]):
            row["_rate"] = float(r["rate"])
        return row

    @property
    def labels(self) -> list[int]:
        return self.shards.index["label"][self.indices].tolist()

    def column(self, name: str) -> np.ndarray:
        """One index column (label, duration, rate ...) of these rows, without reading any row."""
        return np.asarray(self.shards.index[name][self.indices])

    def subset(self, keep: np.ndarray) -> ShardRows:
        """The rows where the boolean array ``keep`` is true."""
        return ShardRows(self.shards, self.indices[np.asarray(keep, bool)], self.split_record)

    def select_split(self, split: str | None) -> tuple[ShardRows, dict | None]:
        """The rows of ``split`` (all for None), and the record of a held-out split made when packing."""
        if split is None:
            return self, None
        if split not in self.shards.splits:
            return ShardRows(self.shards, self.indices[:0]), None
        code = self.shards.splits.index(split)
        keep = self.indices[np.asarray(self.shards.index["split"][self.indices]) == code]
        record = self.shards.header.get("split_record")
        if record:
            record = {**record, "split": split, "val_files_in": str(self.shards.folder / record["val_files_in"])}
        return ShardRows(self.shards, keep, record), record


# ------------------------------------------------------------------------------------- writing
def _add(tar: tarfile.TarFile, name: str, data: bytes) -> tuple[int, int]:
    """Append one member; returns (offset of its data, size). Names are short, so every header is one
    512-byte ustar block and the data follows it."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed time stamps: packing twice gives the same bytes
    start = tar.offset
    tar.addfile(info, io.BytesIO(data))
    return start + tarfile.BLOCKSIZE, len(data)


def pack(rows: Sequence[dict], out, *, source, split_record: dict | None = None,
         probe: Callable[[str], dict] | None = None, shard_bytes: int = SHARD_BYTES,
         label_column: str = "label", modality: str = "", progress: bool = True) -> dict:
    """Write ``rows`` (manifest rows with ``path`` and ``split``; files not yet read) into WebDataset
    shards under ``out``; returns the header.

    probe(path) -> {"duration": s, "rate": fps} is called on every file (a video's length), and a file
    it raises DataError on, or that cannot be read, is skipped and listed in the header's ``skipped``.
    """
    from tqdm.auto import tqdm

    from .manifest import row_label

    final = Path(out)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise DataError(f"{final}: the output folder exists and is not empty; pack into a new folder")
    out = final.parent / f".{final.name}.partial"  # renamed into place at the end: a stopped pack leaves no half folder
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    splits: list[str] = []
    records, extensions, shards, skipped = [], [], [], {}
    tar, shard_size = None, 0
    try:
        for row in tqdm(rows, desc=f"packing {Path(source).name}", unit="file", disable=not progress):
            path = row["path"]
            try:
                data = Path(path).read_bytes()
                probed = probe(path) if probe is not None else {}
            except (OSError, DataError) as err:
                skipped[str(path)] = str(err)
                continue
            if tar is None or shard_size >= shard_bytes:
                if tar is not None:
                    tar.close()
                shards.append(f"shard-{len(shards):06d}.tar")
                tar, shard_size = tarfile.open(out / shards[-1], "w", format=tarfile.USTAR_FORMAT), 0
            key = f"{len(records):09d}"
            ext = Path(path).suffix.lower()
            meta = {k: v for k, v in row.items() if k not in ("path", "member") and not k.startswith("_")}
            meta.setdefault("path_as_written", os.path.relpath(path, source if Path(source).is_dir()
                                                              else Path(source).parent))
            meta.update({k: v for k, v in probed.items() if v is not None})
            offset, size = _add(tar, key + ext, data)
            meta_bytes = json.dumps(meta, sort_keys=True).encode()
            meta_offset, meta_size = _add(tar, key + ".json", meta_bytes)
            shard_size += size + meta_size + 2 * tarfile.BLOCKSIZE
            split = str(row.get("split") or "")
            if split not in splits:
                splits.append(split)
            if ext not in extensions:
                extensions.append(ext)
            duration, rate = probed.get("duration"), probed.get("rate")
            records.append((len(shards) - 1, offset, size, meta_offset, meta_size, row_label(row, label_column),
                            splits.index(split), np.nan if duration is None else duration,
                            np.nan if rate is None else rate, extensions.index(ext)))
    finally:
        if tar is not None:
            tar.close()
    if not records:
        raise DataError(f"{source}: no file could be packed ({len(skipped)} skipped"
                        + (f"; the first: {next(iter(skipped.values()))})" if skipped else ")"))
    index = np.array(records, dtype=INDEX_DTYPE)
    np.save(out / INDEX, index)
    labels = index["label"]
    classes = sorted({(row_label(r, label_column), r.get("class", "")) for r in rows
                      if row_label(r, label_column) >= 0})
    if split_record is not None:  # per-file lists go beside the header, which every process loads
        (out / VAL_FILES).write_text(json.dumps(split_record.get("val_files", []), indent=0))
        split_record = {k: v for k, v in split_record.items() if k != "val_files"} | {"val_files_in": VAL_FILES}
    (out / SKIPPED).write_text(json.dumps(skipped, indent=1))
    header = {"format": FORMAT, "version": VERSION, "modality": modality, "source": str(source),
              "count": len(records), "shards": shards, "splits": splits, "extensions": extensions,
              "num_classes": int(labels.max()) + 1 if (labels >= 0).any() else 0,
              "classes": [c for _, c in classes] if classes and all(c for _, c in classes) else None,
              "label_column": label_column, "split_record": split_record, "skipped": len(skipped),
              "bytes": int(sum((out / s).stat().st_size for s in shards))}
    (out / HEADER).write_text(json.dumps(header, indent=1))
    if final.exists():
        final.rmdir()  # empty, checked above
    os.replace(out, final)
    return header


def verify(folder) -> int:
    """Reads every shard with Python's tarfile and checks each indexed member is where the index
    says (the shards are ordinary tar files); returns the sample count."""
    shards = ShardSet(folder)
    where = {}
    for n, path in enumerate(shards.shards):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                where[(n, m.offset_data)] = m.size
    for k in range(len(shards)):
        r = shards.index[k]
        for off, size in ((r["offset"], r["size"]), (r["meta_offset"], r["meta_size"])):
            if where.get((int(r["shard"]), int(off))) != int(size):
                raise DataError(f"{folder}: sample {k}: no {int(size)}-byte tar member at offset {int(off)} "
                                f"of {shards.shards[int(r['shard'])]}")
    return len(shards)
