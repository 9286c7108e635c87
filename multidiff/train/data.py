"""A deterministic data stream, sharded by process, resumable at any sample.

Training reads one endless stream of *positions* 0, 1, 2, ...; position p is item
``perm_e[p mod N]`` of the data set, where e = p // N and perm_e is a permutation seeded by
(seed, e). Optimizer step k consumes the positions [s, s + B) with s the samples seen
before it and B the global batch; process r of P takes the slice [s + r B/P, s + (r+1) B/P).
So the global batch is the same for any process count, and resuming only needs s.

Each sample's training noise comes from its own generator seeded by (seed, position)
(:func:`sample_generators`), so it does not depend on the batch it lands in either.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..core.utils import mix_seed

__all__ = ["mix_seed", "sample_generators", "PositionDataset", "RankBatchSampler", "make_loader", "collate"]


def sample_generators(seed: int, positions: torch.Tensor, device) -> list[torch.Generator]:
    """One generator per sample, seeded from (seed, stream position): positions (batch,) -> list."""
    device = torch.device(device)
    return [torch.Generator(device).manual_seed(mix_seed(seed, int(p))) for p in positions.tolist()]


class PositionDataset(Dataset):
    """Maps a stream position to ``{"x": ..., other keys..., "position": p}``."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, int(seed)
        self.n = len(dataset)
        if self.n == 0:
            raise ValueError("the data set is empty")
        self._epoch, self._perm = -1, None

    def index(self, position: int) -> int:
        epoch, offset = divmod(int(position), self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, -1 - epoch))
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
            set_epoch = getattr(self.dataset, "set_epoch", None)
            if set_epoch is not None:  # per-epoch augmentation draws (crop, polarity, masks) follow the position
                set_epoch(epoch)
        return int(self._perm[offset])

    def indices(self, positions: list[int]) -> list[int]:
        """Data-set indices of many positions (vectorised within an epoch)."""
        if not positions:
            return []
        first_epoch, last_epoch = positions[0] // self.n, positions[-1] // self.n
        if first_epoch == last_epoch and positions == list(range(positions[0], positions[0] + len(positions))):
            self.index(positions[0])  # make sure the epoch's permutation is current
            start = positions[0] - first_epoch * self.n
            return self._perm[start:start + len(positions)].tolist()
        return [self.index(p) for p in positions]

    def __len__(self) -> int:  # the stream is endless; DataLoader only needs this for samplers it builds
        return self.n

    def __getitems__(self, positions: list[int]):
        """A whole batch at once: the data set's own ``__getitems__(indices) -> dict batch`` when it
        has one (in-memory data sets), else a list of items for the DataLoader to collate."""
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is None:
            return [self[p] for p in positions]
        batch = getitems(self.indices(positions))
        if not isinstance(batch, dict) or "x" not in batch:
            raise TypeError("a data set's __getitems__ must return a dict batch with an 'x' tensor")
        batch = dict(batch)
        batch["position"] = torch.tensor(positions, dtype=torch.long)
        return batch

    def __getitem__(self, position: int) -> dict:
        item = self.dataset[self.index(position)]
        if torch.is_tensor(item):
            item = {"x": item}
        elif not isinstance(item, dict) or "x" not in item:
            raise TypeError(f"data set items must be tensors or dicts with an 'x' tensor, got {type(item).__name__}")
        else:
            item = dict(item)
        item["position"] = int(position)
        return item


class RankBatchSampler(Sampler):
    """Endless lists of stream positions: this process's share of each global batch."""

    def __init__(self, start: int, batch_size: int, rank: int, world: int):
        if batch_size % world:
            raise ValueError(f"global batch {batch_size} does not divide among {world} processes")
        self.start, self.batch_size, self.rank, self.world = int(start), int(batch_size), int(rank), int(world)
        self.local = batch_size // world

    def __iter__(self) -> Iterator[list[int]]:
        s = self.start
        while True:
            first = s + self.rank * self.local
            yield list(range(first, first + self.local))
            s += self.batch_size

    def __len__(self) -> int:  # pragma: no cover - endless
        return 2**62


def make_loader(dataset, *, seed: int, start: int, batch_size: int, rank: int, world: int,
                num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader yielding this process's dict batches: "x" (B/P, *sample_shape), "position" (B/P,), ..."""
    return DataLoader(PositionDataset(dataset, seed), batch_sampler=RankBatchSampler(start, batch_size, rank, world),
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False, collate_fn=collate)


def collate(items):
    """Stack a list of item dicts; pass through a batch a data set already assembled."""
    if isinstance(items, dict):
        return items
    return default_collate(items)
