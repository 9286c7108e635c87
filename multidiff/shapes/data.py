"""Shape data adapter: a folder or a manifest (CSV / JSONL with path, label, split) of mesh files.

Each item is a dict:
  x      (num_points, 3) float32 surface points, normalised (see ``normalize``)
  label  int class label (-1 when unlabelled)
  index  int row index (to look up the row's path and normalisation)
  coarse (coarse_points, 3) another, disjoint sample of the same surface, normalised the same
         way (only with ``coarse_points`` > 0: the conditioning of an upsampler, as in Point-E)

Per mesh, a pool of ``pool_size`` surface points is sampled once (area-weighted, seeded by
the row) and kept in an optional on-disk cache (``cache_dir``, one .npy per mesh, keyed by the
file's path, size, mtime and the pool settings); every item then draws ``num_points`` of the
pool without replacement, so epochs see different subsets as in PointFlow's training.
Empty, broken or degenerate meshes are skipped (the next mesh is used), counted in
``bad_files`` (path -> reason) and named in a warning. Random choices come from a generator
seeded by (seed, epoch, index), so an item does not depend on batch composition or workers.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.utils import item_generator
from ..errors import DataError
from ..manifest import ManifestRows, check_labels, read_rows, row_label, select_split
from ..manifest import scan_folder as scan_files
from ..shards import cache_key
from .io import (
    MESH_EXTENSIONS,
    MeshLoadError,
    Normalization,
    augment,
    fit_normalization,
    global_statistics,
    load_mesh,
    sample_mesh,
)


def scan_folder(root) -> list[dict]:
    """Mesh files under root, labelled by class folder (multidiff.manifest.scan_folder)."""
    return scan_files(root, MESH_EXTENSIONS)


class ShapeDataset(ManifestRows, Dataset):
    """Fixed-size surface point clouds from a folder or manifest of meshes.

    source: folder (class = sub-folder) or .csv / .jsonl manifest with ``path`` and optionally
    ``label`` / ``split``. num_points: points per item. split: keep rows whose 'split' equals it.
    normalize: "none", "global" (PointFlow: data-set mean and std; the statistics come from
    ``stats`` or are computed over this split's pools), "unit_sphere" or "bbox" (per shape).
    augment: rotation about the up (y) axis and anisotropic scaling (before normalisation).
    pool_size: surface points sampled once per mesh (cached); defaults to 4 * (num_points + coarse_points).
    coarse_points: > 0 adds a "coarse" cloud of that many points to every item (upsampler training).
    """

    def __init__(self, source, num_points: int = 2048, *, split: str | None = None, normalize: str = "global",
                 stats: Normalization | None = None, augment: bool = False, rotate: bool = True,
                 scale_range: tuple[float, float] | None = (0.85, 1.15), pool_size: int | None = None,
                 cache_dir=None, seed: int = 0, label_column: str = "label", progress: bool = False,
                 coarse_points: int = 0):
        source = Path(source)
        if not source.exists():
            raise FileNotFoundError(f"shape data source {source} does not exist")
        rows = read_rows(source, MESH_EXTENSIONS, "shapes")
        rows, self.split_record = select_split(rows, source, split)
        if not rows:
            raise DataError(f"{source}: no mesh files" + (f" in split {split!r}" if split else ""))
        check_labels(rows, label_column, source)
        self.rows, self.source, self.num_points = rows, source, int(num_points)
        self.coarse_points = int(coarse_points)
        self.pool_size = int(pool_size or 4 * (num_points + self.coarse_points))
        if self.pool_size < self.num_points + self.coarse_points:
            raise ValueError(f"pool_size {self.pool_size} is smaller than num_points + coarse_points "
                             f"{self.num_points + self.coarse_points}")
        self.normalize, self.augment, self.rotate, self.scale_range = normalize, augment, rotate, scale_range
        self.seed, self.label_column, self.epoch = seed, label_column, 0
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.bad_files: dict[str, str] = {}
        self.stats = stats
        fit_normalization(torch.zeros(2, 3), normalize, stats or Normalization(torch.zeros(3), torch.ones(1)))  # check mode
        if normalize == "global" and stats is None:
            try:
                self.stats = global_statistics(self._pools(progress))  # one pool in memory at a time
            except ValueError:
                raise DataError(f"{source}: no usable mesh ({len(self.bad_files)} skipped; the first: "
                                f"{next(iter(self.bad_files.values()), '')})") from None

    # properties the trainer and recipes read

    # ------------------------------------------------------------------ loading
    def _row_seed(self, row: dict) -> int:
        key = row["path_as_written"] if "member" in row else os.path.abspath(row["path"])  # a shard's: where it was packed from
        return int.from_bytes(hashlib.sha1(str(key).encode()).digest()[:4], "little")

    def _cache_path(self, path) -> Path | None:
        if self.cache_dir is None:
            return None
        file_key = cache_key(path)
        key = f"{file_key}|{self.pool_size}|v1"
        return self.cache_dir / (hashlib.sha1(key.encode()).hexdigest() + ".npy")

    def pool(self, index: int) -> torch.Tensor:
        """(pool_size, 3) surface points of row ``index`` in the file's coordinates (cached).
        Raises MeshLoadError for an unusable mesh."""
        row = self.rows[index]
        path = row["path"]
        source = row.get("member") or path  # a file, or a shard member
        try:
            cached = self._cache_path(source)
        except OSError as err:
            raise MeshLoadError(f"{path}: {err}") from None
        if cached is not None and cached.is_file():
            return torch.from_numpy(np.load(cached))
        pts = sample_mesh(load_mesh(source), self.pool_size, self._row_seed(row))
        if cached is not None:
            tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, pts)
            os.replace(tmp, cached)
        return torch.from_numpy(pts)

    def _skip(self, path: str, err: Exception) -> None:
        self.bad_files[path] = str(err)
        reason = str(err) if str(err).startswith(str(path)) else f"{path}: {err}"
        warnings.warn(f"skipping unusable mesh {reason} ({len(self.bad_files)} skipped so far)", stacklevel=3)

    def _pools(self, progress: bool = False):
        """Every usable row's pool (bad ones skipped and counted), with an optional progress bar."""
        it = range(len(self.rows))
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="sampling meshes", leave=False)
        for k in it:
            if self.rows[k]["path"] in self.bad_files:
                continue
            try:
                yield self.pool(k)
            except MeshLoadError as err:
                self._skip(self.rows[k]["path"], err)

    def check(self, progress: bool = True) -> dict[str, str]:
        """Load every mesh once (filling the cache); returns ``bad_files``."""
        for _ in self._pools(progress):
            pass
        return dict(self.bad_files)

    def normalization(self, points: torch.Tensor) -> Normalization:
        """The normalisation applied to a cloud (its inverse maps generated clouds back to file units
        for "global"; per-shape modes have one per item)."""
        return fit_normalization(points, self.normalize, self.stats)

    def _rng(self, index: int, epoch: int) -> torch.Generator:
        return item_generator(self.seed, epoch, index)

    def __getitem__(self, index: int) -> dict:
        return self.item(index, self.epoch)

    def item(self, index: int, epoch: int) -> dict:
        """Item ``index`` with the random choices (point subset, augmentation) of ``epoch``."""
        for attempt in range(len(self.rows)):
            k = (index + attempt) % len(self.rows)
            path = self.rows[k]["path"]
            if path in self.bad_files:
                continue
            try:
                pool = self.pool(k)
            except MeshLoadError as err:
                self._skip(path, err)
                continue
            return self._make_item(pool, k, index, epoch)
        raise DataError(f"{self.source}: no usable mesh ({len(self.bad_files)} skipped: "
                           f"{', '.join(list(self.bad_files)[:5])}{' ...' if len(self.bad_files) > 5 else ''})")

    def _make_item(self, pool: torch.Tensor, k: int, index: int, epoch: int) -> dict:
        g = self._rng(index, epoch)
        order = torch.randperm(len(pool), generator=g)
        pts = pool[order[: self.num_points + self.coarse_points]]
        if self.augment:
            pts = augment(pts, g, rotate=self.rotate, scale_range=self.scale_range)
        pts = self.normalization(pts[: self.num_points]).apply(pts).float()
        row = self.rows[k]  # once: a shard row is read from its shard on every access
        item = {"x": pts[: self.num_points].contiguous(), "label": row_label(row, self.label_column), "index": k,
                "text": str(row.get("text", "") or "")}
        if self.coarse_points:  # an independent, disjoint sample of the same surface, same normalisation
            item["coarse"] = pts[self.num_points:].contiguous()
        return item
