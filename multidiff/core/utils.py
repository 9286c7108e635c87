"""Small tensor helpers shared by the core: rank-agnostic broadcasting and seeded noise."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

Generator = Union[torch.Generator, Sequence[torch.Generator], None]


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dims so a (batch,) tensor broadcasts against an ndim tensor."""
    missing = ndim - t.ndim
    if missing < 0:
        raise ValueError(f"append_dims: tensor has {t.ndim} dims, more than the target {ndim}")
    return t[(...,) + (None,) * missing]


def per_sample(value, x: torch.Tensor, dtype=None) -> torch.Tensor:
    """Turn a scalar / 0-d / (batch,) noise level into a (batch,) tensor on x's device."""
    t = torch.as_tensor(value, device=x.device, dtype=dtype or torch.float64)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def randn_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Standard normal noise shaped like x.

    ``generator`` may be one torch.Generator, or a list with one generator per sample so
    that each sample's noise does not depend on the rest of its batch.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    generators = list(generator)
    if len(generators) != x.shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {x.shape[0]}")
    return torch.stack(
        [torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype) for g in generators]
    )


def rand_per_sample(batch: int, generator: Generator = None, device=None, dtype=torch.float32, normal=False):
    """(batch,) uniform (or normal) draws with the same per-sample generator rules as randn_like."""
    draw = torch.randn if normal else torch.rand
    if generator is None or isinstance(generator, torch.Generator):
        return draw((batch,), generator=generator, device=device, dtype=dtype)
    generators = list(generator)
    if len(generators) != batch:
        raise ValueError(f"got {len(generators)} generators for a batch of {batch}")
    return torch.cat([draw((1,), generator=g, device=device, dtype=dtype) for g in generators])


_MASK64 = (1 << 64) - 1


def mix_seed(seed: int, index: int) -> int:
    """A well-spread 63-bit generator seed for (seed, index) (splitmix64's finaliser): nearby seeds
    and indices give unrelated streams, so (7, k + 1) and (8, k) share nothing."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def item_generator(seed: int, epoch: int, index: int, stream: int = 0) -> torch.Generator:
    """The generator of data item ``index`` in ``epoch``: its crop, noise, task draw ... depend on
    (seed, epoch, index) only, never on the batch or worker it lands in. ``stream`` separates the
    draws of two consumers of one item (a data set's crop, its wrapper's task mask)."""
    return torch.Generator().manual_seed(mix_seed(mix_seed(mix_seed(seed, stream), epoch), index))


def make_generators(seed: int, batch: int, device="cpu", *, start: int = 0) -> list:
    """One generator per sample, sample k (counted from ``start``) seeded by ``mix_seed(seed, k)``:
    sample k is the same in any batch or chunk size, and two seeds share no sample."""
    return [torch.Generator(device).manual_seed(mix_seed(seed, start + k)) for k in range(batch)]
