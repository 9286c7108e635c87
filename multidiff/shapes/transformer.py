"""Point-cloud transformers for diffusion on (batch, points, 3 + features).

Every point is one token: its coordinates go through random Fourier features (Tancik et al.
2020) and, with any extra per-point features, a linear projection to the model width. There
is no positional order: nothing in the network depends on the index of a point, so the
output is permutation *equivariant* (permuting the input points permutes the output the same
way; tests/test_shapes_transformer.py checks it to 1e-5). Generation of unordered sets with a
plain transformer follows Nichol et al. 2022, "Point-E" (Sec. 4.1).

Two token mixers (``num_latents``):

* ``num_latents = 0``: full self-attention over the points, DiT blocks (Peebles & Xie 2023)
  with adaLN-Zero modulation from the noise-level (+ class) embedding. Cost O(points^2).
* ``num_latents = L > 0``: a fixed set of L learned latent tokens reads the points by
  cross-attention, mixes by self-attention among the latents, and writes back to the points
  by cross-attention followed by a per-point MLP (Jaegle et al. 2022, "Perceiver IO";
  repeated ``rounds`` times with the latents carried over, as in Jabri et al. 2023,
  "Scalable Adaptive Computation for Iterative Generation" (RIN)). Cost O(points * L):
  linear in the number of points.

Conditioning mapping keys (all optional; a missing key means "unconditional"):

* ``label``: (batch,) long class labels; -1 or ``num_classes`` is the null label (CFG).
* ``context``: (batch, tokens, cross_attention_dim) sequence attended to by cross-attention
  in every block (text / image embeddings, a partial cloud's encoding ...).
* ``context_mask``: (batch, tokens) bool, True = attend.
* ``coarse``: (batch, coarse_points, coarse_channels) a coarse cloud for the upsampler stage
  (``coarse_channels > 0``). As in Point-E's upsampler (Sec. 4.3) the coarse points become
  extra tokens (with their own input projection and a learned "coarse" type embedding)
  that the fine points attend to (full mixer) or that the latents read together with the
  fine points and that the fine points attend to beside the latents in every write (latent
  mixer: a few latents cannot carry where the nearby surface is); only the fine tokens are output.

Optional local path (``local_neighbors`` = k > 0): after each write (or after the last block of
the full mixer) a :class:`LocalEdgeBlock` lets every point look at its k nearest neighbours in the
noisy input, an EdgeConv (Wang et al. 2019, DGCNN, Eq. 7-8) with a max over the neighbours. Near
the end of sampling the denoiser's job is to move each point onto the surface, which is local: the
maxima of v . (x_j - x_i) over the neighbours are the neighbourhood's support function, so the block
sees where the nearby surface lies along learned directions (PVD, Zhou et al. 2021, gets the same
locality from voxel convolutions), which a few latent tokens summarise only coarsely. Equivariant.

forward(x (batch, points, in_channels), noise_level (batch,), cond) -> (batch, points, out_channels).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up here)
from torch import nn

from ..nn import (
    AdaLNZero,
    FourierFeatures,
    modulate,
)
from ..nn.conditioning import ConditionedBackbone
from ..nn.modeling import SafetensorsModelMixin
from ..nn.transformer import DiTBlock, FinalLayer


class PointEmbed(nn.Module):
    """(batch, points, channels) -> (batch, points, dim): [x, Fourier(x[..., :3])] -> Linear.

    Per point only, so it commutes with any permutation of the points.
    """

    def __init__(self, channels: int, dim: int, n_fourier: int, scale: float, seed: int = 0):
        super().__init__()
        self.fourier = FourierFeatures(3, n_fourier, scale, seed=seed) if n_fourier > 0 else None
        self.proj = nn.Linear(channels + 2 * n_fourier, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        if self.fourier is not None:
            feats.append(self.fourier(x[..., :3]).to(x.dtype))
        return self.proj(torch.cat(feats, dim=-1))


def knn_indices(x: torch.Tensor, k: int, *, max_elements: int = 2 ** 24) -> torch.Tensor:
    """(batch, points, 3) -> (batch, points, k) long: each point's k nearest points (itself
    included), by Euclidean distance, over blocks of query points so that at most
    ``max_elements`` distances are held at once."""
    b, n, _ = x.shape
    k = min(k, n)
    block = max(1, max_elements // max(b * n, 1))
    out = torch.empty(b, n, k, dtype=torch.long, device=x.device)
    with torch.no_grad():
        xf = x.float()
        for s in range(0, n, block):
            out[:, s:s + block] = torch.cdist(xf[:, s:s + block], xf).topk(k, dim=-1, largest=False).indices
    return out


class LocalEdgeBlock(nn.Module):
    """Residual max-over-neighbours edge block (see the module docstring).

    h (batch, points, dim), x (batch, points, 3) the noisy coordinates, emb (batch, emb_dim),
    neighbours (batch, points, k) -> h + gate * Linear(GELU(m_i)) with
    m_i = max_j [A h_j + P s (x_j - x_i)] per channel over the k neighbours j of point i: the
    offset term makes max_j P s x_j - P s x_i the support function of the neighbourhood along
    the rows of P. (shift, scale, gate) come from adaLN-Zero; s = ``offset_scale`` scales the
    offsets (a fraction of the data's unit) up to the range of the features. Since the offset
    term is linear, A h_j + P s x_j is computed per point and only its per-channel winners are
    gathered with gradient, so memory and backward cost are O(points * dim), the forward max
    O(points * k * dim).
    """

    def __init__(self, dim: int, emb_dim: int, offset_scale: float = 10.0):
        super().__init__()
        self.offset_scale = float(offset_scale)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = AdaLNZero(emb_dim, dim, n_chunks=3)
        self.feature = nn.Linear(dim, dim)
        self.offset = nn.Linear(3, dim, bias=False)
        self.out = nn.Linear(dim, dim)  # default init: the zero gate alone starts the branch at zero

    def forward(self, h: torch.Tensor, x: torch.Tensor, emb: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = (c.to(h.dtype) for c in self.ada(emb))
        at_point = self.offset((x * self.offset_scale).to(h.dtype))  # P s x_i
        c = self.feature(modulate(self.norm(h), shift, scale)) + at_point  # A h_j + P s x_j, per point
        b, n, k = neighbours.shape
        with torch.no_grad():  # which neighbour wins each channel (channels first: the max runs over contiguous k)
            ct = c.transpose(1, 2).contiguous()
            cand = torch.gather(ct, 2, neighbours.reshape(b, 1, n * k).expand(-1, ct.shape[1], -1))
            winner = cand.view(b, -1, n, k).argmax(dim=-1).transpose(1, 2)  # (b, n, dim) neighbour slot
            winner = torch.gather(neighbours, 2, winner)  # (b, n, dim) point index
        m = torch.gather(c, 1, winner) - at_point
        return h + gate * self.out(torch.nn.functional.gelu(m, approximate="tanh"))


def _heads(dim: int, heads: int) -> int:
    """The largest head count <= heads that divides dim."""
    return max(h for h in range(1, heads + 1) if dim % h == 0)


class PointCloudTransformer(SafetensorsModelMixin, ConfigMixin, ConditionedBackbone):
    """Diffusion backbone on point clouds: forward(x (batch, points, in_channels), noise_level (batch,), cond)
    -> (batch, points, out_channels).

    in_channels: 3 coordinates + per-point features (normals, colours ...); the first three
    channels are the coordinates that get Fourier features. dim / depth / heads: width,
    number of blocks, attention heads. fourier_features / fourier_scale: number and std
    (cycles per unit) of the random frequencies. num_classes > 0 adds a class embedding
    (null label -1 or num_classes). cross_attention_dim: width of cond["context"] tokens.
    num_latents > 0 selects the latent-token mixer with ``rounds`` read / process / write
    rounds of ``depth`` latent blocks each (see the module docstring); 0 the full mixer.
    coarse_channels > 0 makes an upsampler conditioned on cond["coarse"]. point_dim (latent
    mixer only): width of the point tokens, which may be narrower than the latents' ``dim``;
    the per-point work (embedding, write-back attention, per-point MLP), which dominates at
    thousands of points, scales with it. local_neighbors = k > 0 adds a :class:`LocalEdgeBlock`
    over each point's k nearest neighbours after every write (full mixer: after the last block);
    local_offset_scale multiplies the neighbour offsets. local_reference_points = n0 > 0 scales k
    with the point count (k n / n0 neighbours for n points), so that a model trained on n0 points
    and sampled at more looks at the same surface area around each point. pooled_context adds the
    mean of cond["context"]'s real tokens to the noise-level embedding (multidiff.nn.PooledContextEmbedding).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int | None = None, dim: int = 256, depth: int = 6,
                 heads: int = 4, mlp_ratio: float = 4.0, fourier_features: int = 64, fourier_scale: float = 1.0,
                 emb_dim: int | None = None, num_classes: int = 0, cross_attention_dim: int | None = None,
                 num_latents: int = 0, rounds: int = 1, coarse_channels: int = 0, dropout: float = 0.0,
                 attention_backend: str = "auto", point_dim: int | None = None, local_neighbors: int = 0,
                 local_offset_scale: float = 10.0, local_reference_points: int = 0,
                 pooled_context: bool = False):
        super().__init__()
        if in_channels < 3:
            raise ValueError(f"PointCloudTransformer needs in_channels >= 3 (x, y, z first), got {in_channels}")
        if depth < 1 or rounds < 1:
            raise ValueError(f"depth and rounds must be >= 1, got depth={depth}, rounds={rounds}")
        if min(num_latents, coarse_channels, local_neighbors, local_reference_points) < 0:
            raise ValueError(f"num_latents, coarse_channels, local_neighbors and local_reference_points must be >= 0, "
                             f"got {num_latents}, {coarse_channels}, {local_neighbors}, {local_reference_points}")
        emb_dim = emb_dim or dim
        if num_latents == 0 and point_dim not in (None, dim):
            raise ValueError(f"point_dim ({point_dim}) differs from dim ({dim}): only the latent-token mixer "
                             f"(num_latents > 0) has a separate point width")
        pdim = point_dim or dim
        self.out_ch = out_channels or in_channels
        self.gradient_checkpointing = False
        self.init_conditioning(emb_dim, num_classes, None, cross_attention_dim, pooled_context)
        self.point_embed = PointEmbed(in_channels, pdim, fourier_features, fourier_scale, seed=0)
        if coarse_channels:
            self.coarse_embed = PointEmbed(coarse_channels, pdim, fourier_features, fourier_scale, seed=1)
            self.coarse_type = nn.Parameter(torch.zeros(pdim))
            nn.init.normal_(self.coarse_type, std=0.02)
        block = dict(heads=heads, emb_dim=emb_dim, mlp_ratio=mlp_ratio, context_dim=cross_attention_dim,
                     dropout=dropout, backend=attention_backend)
        if num_latents == 0:
            self.blocks = nn.ModuleList([DiTBlock(dim, **block) for _ in range(depth)])
        else:
            self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
            rw = {**block, "context_dim": None}
            self.reads = nn.ModuleList([DiTBlock(dim, kv_dim=pdim, **rw) for _ in range(rounds)])
            self.latent_blocks = nn.ModuleList([nn.ModuleList([DiTBlock(dim, **block) for _ in range(depth)])
                                                for _ in range(rounds)])
            self.writes = nn.ModuleList([DiTBlock(pdim, kv_dim=dim, **{**rw, "heads": _heads(pdim, heads)})
                                         for _ in range(rounds)])
            if coarse_channels:  # the coarse tokens join the latents as keys of every write
                self.coarse_to_latent = nn.Linear(pdim, dim)
        n_local = (rounds if num_latents else 1) if local_neighbors else 0
        self.locals = nn.ModuleList([LocalEdgeBlock(pdim, emb_dim, local_offset_scale) for _ in range(n_local)])
        self.final = FinalLayer(pdim, emb_dim, self.out_ch)

    # ------------------------------------------------------------------ helpers
    def _coarse_tokens(self, x: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor | None:
        if not self.config.coarse_channels:
            return None
        coarse = cond.get("coarse")
        if coarse is None:
            return None  # unconditional upsampler call (e.g. a generic preview): fine tokens only
        want = self.config.coarse_channels
        if coarse.ndim != 3 or coarse.shape[0] != x.shape[0] or coarse.shape[-1] != want:
            raise ValueError(f"cond['coarse'] must have shape (batch={x.shape[0]}, coarse_points, {want}), "
                             f"got {tuple(coarse.shape)}")
        return self.coarse_embed(coarse.to(x.dtype)) + self.coarse_type.to(x.dtype)

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: Mapping[str, Any] | None = None) -> torch.Tensor:
        cond = cond or {}
        c = self.config
        if x.ndim != 3 or x.shape[-1] != c.in_channels:
            raise ValueError(f"PointCloudTransformer expects (batch, points, {c.in_channels}), got {tuple(x.shape)}")
        context, context_mask = cond.get("context"), cond.get("context_mask")
        if context is not None and c.cross_attention_dim is None:
            raise ValueError("cond['context'] given but the model has no cross-attention (cross_attention_dim=None)")
        if context is not None and (context.ndim != 3 or context.shape[-1] != c.cross_attention_dim):
            raise ValueError(f"cond['context'] must have shape (batch, tokens, {c.cross_attention_dim}), "
                             f"got {tuple(context.shape)}")
        emb = self.embed_conditions(x, noise_level, cond)
        h = self.point_embed(x)
        coarse = self._coarse_tokens(x, cond)
        n = h.shape[1]
        neighbours = None
        if c.local_neighbors:
            k = c.local_neighbors
            if c.local_reference_points:
                k = max(1, round(k * n / c.local_reference_points))
            neighbours = knn_indices(x[..., :3], k)
        if c.num_latents == 0:
            if coarse is not None:
                h = torch.cat([h, coarse], dim=1)
            for blk in self.blocks:
                h = self.run(blk, h, emb, None, context, context_mask)
            h = h[:, :n]
            if neighbours is not None:
                h = self.run(self.locals[0], h, x[..., :3], emb, neighbours)
        else:
            z = self.latents.to(h.dtype)[None].expand(h.shape[0], -1, -1)
            coarse_keys = None if coarse is None else self.coarse_to_latent(coarse)
            for r, (read, blocks, write) in enumerate(zip(self.reads, self.latent_blocks, self.writes)):
                source = h if coarse is None else torch.cat([h, coarse], dim=1)
                z = self.run(read, z, emb, source, None, None)
                for blk in blocks:
                    z = self.run(blk, z, emb, None, context, context_mask)
                h = self.run(write, h, emb, z if coarse_keys is None else torch.cat([z, coarse_keys], dim=1), None, None)
                if neighbours is not None:
                    h = self.run(self.locals[r], h, x[..., :3], emb, neighbours)
        return self.final(h, emb)


# ------------------------------------------------------------------------------ presets
def point_tiny(**kw) -> PointCloudTransformer:
    """Full attention, ~0.2M parameters: tests."""
    return PointCloudTransformer(**{"dim": 64, "depth": 2, "heads": 2, "fourier_features": 16, **kw})


def point_small(**kw) -> PointCloudTransformer:
    """Full attention, ~4M parameters (Point-E-like at small scale; a few thousand points)."""
    return PointCloudTransformer(**{"dim": 192, "depth": 6, "heads": 4, "fourier_features": 64, **kw})


def point_base(**kw) -> PointCloudTransformer:
    """Full attention, ~58M parameters (Point-E base width 512, 12 layers; GPU)."""
    return PointCloudTransformer(**{"dim": 512, "depth": 12, "heads": 8, "fourier_features": 128, **kw})


def latent_tiny(**kw) -> PointCloudTransformer:
    """Latent tokens (32), ~0.3M parameters: tests and CPU smoke runs."""
    return PointCloudTransformer(**{"dim": 64, "depth": 2, "heads": 2, "fourier_features": 16, "num_latents": 32,
                                    "rounds": 1, **kw})


def latent_small(**kw) -> PointCloudTransformer:
    """Latent tokens (128), 2 rounds of 3 latent blocks, ~7M parameters: 2048-point shapes."""
    return PointCloudTransformer(**{"dim": 192, "depth": 3, "heads": 4, "fourier_features": 64, "num_latents": 128,
                                    "rounds": 2, **kw})


def latent_base(**kw) -> PointCloudTransformer:
    """Latent tokens (256), 3 rounds of 4 latent blocks, ~86M parameters: GPU, up to 16k+ points."""
    return PointCloudTransformer(**{"dim": 512, "depth": 4, "heads": 8, "fourier_features": 128, "num_latents": 256,
                                    "rounds": 3, **kw})


def upsampler_small(**kw) -> PointCloudTransformer:
    """Latent-token upsampler (coarse 1024 -> fine 4096 xyz), ~7M parameters."""
    return PointCloudTransformer(**{"dim": 192, "depth": 3, "heads": 4, "fourier_features": 64, "num_latents": 256,
                                    "rounds": 2, "coarse_channels": 3, **kw})


POINT_PRESETS = {"point_tiny": point_tiny, "point_small": point_small, "point_base": point_base,
                 "latent_tiny": latent_tiny, "latent_small": latent_small, "latent_base": latent_base,
                 "upsampler_small": upsampler_small}
