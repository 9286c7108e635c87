"""Shape completion (masked sampling from a partial cloud) and upsampling (a coarse cloud as
conditioning), on top of multidiff.core's samplers. Both take a sigma-space denoiser
(multidiff.core.Denoiser around a PointCloudTransformer, or any guidance wrapper of one).
"""
from __future__ import annotations

import torch

from ..core import make_generators, sample
from ..core.utils import randn_like


def cut_order(cloud: torch.Tensor, direction=(1.0, 0.0, 0.0)) -> torch.Tensor:
    """(batch, points) indices of a (batch, points, C) cloud's points, furthest along ``direction``
    first: cutting by a plane normal to it keeps a prefix."""
    d = torch.as_tensor(direction, dtype=cloud.dtype, device=cloud.device)
    return (cloud[..., :3] @ (d / d.norm())).argsort(dim=1, descending=True)


def partial_cloud(cloud: torch.Tensor, keep: float = 0.5, direction=(1.0, 0.0, 0.0)) -> torch.Tensor:
    """The ``keep`` fraction of a (batch, points, 3) cloud lying furthest along ``direction``
    (a planar cut, as in partial-scan completion benchmarks): (batch, round(keep * points), 3)."""
    k = max(1, int(round(keep * cloud.shape[1])))
    order = cut_order(cloud, direction)[:, :k]
    return torch.gather(cloud, 1, order[..., None].expand(-1, -1, cloud.shape[-1]))


def resample_points(points: torch.Tensor, g: torch.Generator, num_points: int) -> torch.Tensor:
    """``num_points`` of ``points`` (n, C), drawn with ``g``, without repeats unless there are too few."""
    if len(points) >= num_points:
        pick = torch.randperm(len(points), generator=g)[:num_points]
    else:
        pick = torch.randint(0, len(points), (num_points,), generator=g)
    return points[pick.to(points.device)]


def resample_clouds(clouds: torch.Tensor, num_points: int, seed: int) -> torch.Tensor:
    """(batch, n, C) -> (batch, num_points, C) by :func:`resample_points`, one seeded generator for the batch."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([resample_points(cloud, g, num_points) for cloud in clouds])


def initial_noise(n: int, shape, sigma0: float, seed: int, device) -> tuple[torch.Tensor, list]:
    """sigma0 x standard normal (n, *shape) with one generator per sample (multidiff.core.make_generators)."""
    gens = make_generators(seed, n, device)
    return randn_like(torch.empty(n, *shape, device=device), gens) * sigma0, gens


@torch.no_grad()
def complete(denoiser, partial: torch.Tensor, num_points: int, sigmas: torch.Tensor, *, method: str = "dpmpp_2m",
             cond: dict | None = None, seed: int = 0, resample: int = 1) -> torch.Tensor:
    """Complete partial clouds (batch, known_points, C) to (batch, num_points, C): the known points
    are the first tokens, imposed at every noise level (``cond`` keys known / mask of
    multidiff.core.sample; ``resample`` > 1 uses RePaint); the rest are generated."""
    b, k, c = partial.shape
    if k >= num_points:
        raise ValueError(f"the partial cloud has {k} points, num_points must be larger, got {num_points}")
    known = partial.new_zeros(b, num_points, c)
    known[:, :k] = partial
    mask = partial.new_zeros(b, num_points, 1)
    mask[:, :k] = 1
    x, gens = initial_noise(b, (num_points, c), float(sigmas[0]), seed, partial.device)
    full_cond = {**(cond or {}), "known": known, "mask": mask}
    return sample(denoiser, x, sigmas, method, cond=full_cond, generator=gens, resample=resample)


@torch.no_grad()
def complete_rest(denoiser, partial: torch.Tensor, num_points: int, sigmas: torch.Tensor, *, scan_points: int | None = None,
                  method: str = "dpmpp_2m", cond: dict | None = None, seed: int = 0) -> torch.Tensor:
    """Completion with a model trained on data.params.task=complete_rest (PVD's shape completion, Zhou
    et al. 2021, Sec. 4.3): the partial clouds (batch, known_points, 3) condition it as tokens
    (``scan_points`` of them, drawn without repeats when possible, seeded; None = all) and it generates
    only the missing num_points - known_points points. Returns (batch, num_points, 3): the given
    points verbatim, then the generated ones."""
    b, k, c = partial.shape
    if k >= num_points:
        raise ValueError(f"the partial cloud has {k} points, num_points must be larger, got {num_points}")
    scan = partial if scan_points is None or scan_points == k else resample_clouds(partial, scan_points, seed)
    x, gens = initial_noise(b, (num_points - k, c), float(sigmas[0]), seed, partial.device)
    rest = sample(denoiser, x, sigmas, method, cond={**(cond or {}), "coarse": scan}, generator=gens)
    return torch.cat([partial, rest], dim=1)


@torch.no_grad()
def upsample(denoiser, coarse: torch.Tensor, num_points: int, sigmas: torch.Tensor, *, method: str = "dpmpp_2m",
             cond: dict | None = None, seed: int = 0) -> torch.Tensor:
    """Fine clouds (batch, num_points, 3) from coarse ones (batch, coarse_points, 3) with an upsampler
    (a PointCloudTransformer with coarse_channels = 3, trained with data.params.coarse_points)."""
    x, gens = initial_noise(coarse.shape[0], (num_points, 3), float(sigmas[0]), seed, coarse.device)
    return sample(denoiser, x, sigmas, method, cond={**(cond or {}), "coarse": coarse}, generator=gens)
