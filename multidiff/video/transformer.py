"""Space-time transformer on video patches (Ma et al. 2024, "Latte", variant 1: alternating blocks).

Each frame is cut into p x p patches; a clip (batch, channels, frames, height, width) becomes
frames x (height / p) x (width / p) tokens. The blocks alternate between spatial attention (the
patches of one frame attend to each other) and temporal attention (one patch position across the
frames), so a block's cost is O(frames * patches^2) or O(patches * frames^2), never
O((frames * patches)^2). Every block is a DiT block (adaLN-Zero modulation from the noise-level +
class / pooled-caption embedding, multidiff.nn.transformer). Positions: fixed sine-cosine
embeddings (multidiff.nn.SinusoidalEmbedding, wavelengths 2 pi to 2 pi 10^4 positions as Vaswani et
al.) of the patch row and column on half the channels each (as DiT) plus one of the frame index,
computed for whatever grid the input has, so any frame count and any multiple of p works.

Conditioning mapping keys (all optional; missing means unconditional): ``label`` (batch,) long
(-1 or num_classes = null label, for classifier-free guidance), ``context`` (batch, tokens,
cross_attention_dim) with ``context_mask`` (batch, tokens) bool (pre-norm cross-attention after every
spatial attention), ``concat`` (batch, extra_in_channels, frames, height, width): the given frames and
their mask for frame prediction / interpolation (MCVD's masked conditioning).

forward(x (batch, in_channels, frames, height, width), noise_level (batch,), cond) -> same shape
with out_channels.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up here)
from einops import rearrange
from torch import nn

from ..nn.conditioning import ConditionedBackbone
from ..nn.embeddings import SinusoidalEmbedding
from ..nn.modeling import SafetensorsModelMixin
from ..nn.transformer import DiTBlock, FinalLayer


class VideoTransformer(SafetensorsModelMixin, ConfigMixin, ConditionedBackbone):
    """Latte-style video transformer; ``depth`` counts spatial + temporal blocks (even: they alternate).

    Presets (``transformer_{tiny,small,base}``) set the width and depth; ``patch_size`` sets the
    tokens per frame ((32 / 4)^2 = 64 for 32x32 frames).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 1, out_channels: int | None = None, extra_in_channels: int = 0,
                 patch_size: int = 4, hidden_dim: int = 256, depth: int = 8, heads: int = 4, mlp_ratio: float = 4.0,
                 emb_dim: int = 256, num_classes: int = 0, label_factors: list[int] | None = None,
                 cross_attention_dim: int | None = None, pooled_context: bool = False, dropout: float = 0.0,
                 attention_backend: str = "auto"):
        super().__init__()
        if depth < 2 or depth % 2:
            raise ValueError(f"depth must be an even number >= 2 (spatial and temporal blocks alternate), got {depth}")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if hidden_dim % 4:
            raise ValueError(f"hidden_dim must be a multiple of 4 (2D sine-cosine positions), got {hidden_dim}")
        self.out_ch = out_channels or in_channels
        self.total_factor = patch_size
        self.init_conditioning(emb_dim, num_classes, label_factors, cross_attention_dim, pooled_context)
        patch_in = (in_channels + extra_in_channels) * patch_size ** 2
        self.patch_embed = nn.Linear(patch_in, hidden_dim)  # (b, f, n, c p p) -> (b, f, n, d)
        block = dict(heads=heads, emb_dim=emb_dim, mlp_ratio=mlp_ratio, dropout=dropout, backend=attention_backend)
        self.blocks = nn.ModuleList([
            DiTBlock(hidden_dim, context_dim=cross_attention_dim if i % 2 == 0 else None, **block)
            for i in range(depth)])  # even: spatial (with cross-attention), odd: temporal
        self.final = FinalLayer(hidden_dim, emb_dim, self.out_ch * patch_size ** 2)
        wavelengths = dict(min_freq=1e-4 / (2 * math.pi), max_freq=1 / (2 * math.pi))  # in cycles per position
        self.frame_position = SinusoidalEmbedding(hidden_dim, **wavelengths)
        self.axis_position = SinusoidalEmbedding(hidden_dim // 2, **wavelengths)

    def positions(self, frames: int, rows: int, cols: int) -> torch.Tensor:
        """(frames, rows * cols, hidden_dim): frame embedding + [row embedding, column embedding]."""
        device = self.axis_position.freqs.device
        row = self.axis_position(torch.arange(rows, device=device)).repeat_interleave(cols, dim=0)  # (n, d / 2)
        col = self.axis_position(torch.arange(cols, device=device)).repeat(rows, 1)                 # (n, d / 2)
        frame = self.frame_position(torch.arange(frames, device=device))                            # (f, d)
        return frame[:, None] + torch.cat([row, col], dim=1)[None]

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: Mapping[str, Any] | None = None) -> torch.Tensor:
        cond = cond or {}
        batch, _, frames, height, width = x.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"height and width must be multiples of patch_size {p}, got {height}x{width}")
        rows, cols = height // p, width // p
        emb = self.embed_conditions(x, noise_level, cond)                       # (b, emb_dim)
        h = self.concat_channels(x, cond, self.config.extra_in_channels)        # (b, c + extra, f, H, W)
        h = rearrange(h, "b c f (r p) (s q) -> b f (r s) (c p q)", p=p, q=p)
        h = self.patch_embed(h)                                                 # (b, f, n, d)
        h = h + self.positions(frames, rows, cols).to(h)[None]
        context, context_mask = cond.get("context"), cond.get("context_mask")
        emb_frames = emb.repeat_interleave(frames, dim=0)                       # (b f, emb_dim)
        emb_patches = emb.repeat_interleave(rows * cols, dim=0)                 # (b n, emb_dim)
        if context is not None:
            context = context.to(h.dtype).repeat_interleave(frames, dim=0)
            context_mask = None if context_mask is None else context_mask.repeat_interleave(frames, dim=0)
        for i, block in enumerate(self.blocks):
            if i % 2 == 0:  # spatial: the patches of each frame
                t = rearrange(h, "b f n d -> (b f) n d")
                t = self.run(block, t, emb_frames, None, context, context_mask)
                h = rearrange(t, "(b f) n d -> b f n d", b=batch)
            else:           # temporal: each patch position across the frames
                t = rearrange(h, "b f n d -> (b n) f d")
                t = self.run(block, t, emb_patches)
                h = rearrange(t, "(b n) f d -> b f n d", b=batch)
        out = self.final(rearrange(h, "b f n d -> b (f n) d"), emb)             # (b, f n, c p p)
        return rearrange(out, "b (f r s) (c p q) -> b c f (r p) (s q)", f=frames, r=rows, p=p, q=p)


def transformer_tiny(**kw) -> VideoTransformer:
    return VideoTransformer(**{"hidden_dim": 64, "depth": 4, "heads": 4, "emb_dim": 64, **kw})


def transformer_small(**kw) -> VideoTransformer:
    return VideoTransformer(**{"hidden_dim": 256, "depth": 8, "heads": 4, "emb_dim": 256, **kw})


def transformer_base(**kw) -> VideoTransformer:
    return VideoTransformer(**{"hidden_dim": 384, "depth": 12, "heads": 6, "emb_dim": 384, **kw})


TRANSFORMER_PRESETS = {"tiny": transformer_tiny, "small": transformer_small, "base": transformer_base}
