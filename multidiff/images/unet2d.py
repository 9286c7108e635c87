"""UNet2D: an image U-Net (Ho et al. 2020; Dhariwal & Nichol 2021) for (batch, channels, height, width).

Levels of residual blocks (GroupNorm, SiLU, 3x3 convolutions, FiLM from the conditioning vector),
self-attention at the levels in ``attention_levels``, strided-convolution down-sampling and
nearest + convolution up-sampling, skip connections scaled by ``skip_scale``. The conditioning
vector (multidiff.nn.conditioning) sums the noise-level embedding, the class embedding and an
optional pooled caption; ``cross_attention_dim`` adds cross-attention to caption tokens at the
attention levels; ``extra_in_channels`` are concatenated to the input (masked training); ``patch_size`` > 1 moves
p x p pixel patches onto the channels first (space-to-depth, Hoogeboom et al. 2023), so level 0
runs at (h, w) / p. The output convolution starts at zero.

forward(x (b, c, h, w), noise_level (b,), cond) -> (b, c, h, w); h and w must divide by
patch_size * 2 ** (levels - 1).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up here)
from einops import rearrange
from torch import nn

from ..nn import Attention, FiLM
from ..nn.conditioning import ConditionedBackbone
from ..nn.modeling import SafetensorsModelMixin


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels)


class ResBlock2d(nn.Module):
    """(b, c_in, h, w) -> (b, c_out, h, w): norm, SiLU, conv, FiLM(emb), norm, SiLU, dropout, conv, + skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.film = FiLM(emb_dim, c_out)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = self.film(self.norm2(h), emb)
        h = self.conv2(self.dropout(nn.functional.silu(h)))
        return self.skip(x) + h


class AttentionBlock2d(nn.Module):
    """Self-attention over the h * w positions, then cross-attention to caption tokens when given."""

    def __init__(self, channels: int, heads: int, context_dim: int | None, backend: str):
        super().__init__()
        self.norm = _norm(channels)
        self.attn = Attention(channels, heads, backend=backend)
        self.cross = Attention(channels, heads, context_dim=context_dim, backend=backend) if context_dim else None

    def forward(self, x: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = rearrange(self.norm(x), "b c h w -> b (h w) c")                # (b, h w, c)
        update = self.attn(tokens)
        if self.cross is not None and context is not None:
            update = update + self.cross(tokens + update, context.to(tokens.dtype), context_mask)
        return x + rearrange(update, "b (h w) c -> b c h w", h=h, w=w)


class Level(nn.Module):
    """The blocks of one resolution: residual blocks, each followed by attention where it is on."""

    def __init__(self, c_in: int, c_out: int, blocks: int, emb_dim: int, attention: bool, heads: int,
                 context_dim: int | None, dropout: float, backend: str):
        super().__init__()
        self.res = nn.ModuleList([ResBlock2d(c_in if k == 0 else c_out, c_out, emb_dim, dropout) for k in range(blocks)])
        self.attn = nn.ModuleList([AttentionBlock2d(c_out, heads, context_dim, backend) if attention else nn.Identity()
                                   for _ in range(blocks)])

    def forward(self, h, emb, context=None, context_mask=None):
        for res, attn in zip(self.res, self.attn):
            h = res(h, emb)
            if not isinstance(attn, nn.Identity):
                h = attn(h, context, context_mask)
        return h


class UNet2D(SafetensorsModelMixin, ConfigMixin, ConditionedBackbone):
    """Image U-Net; ``channels[k]`` is the width at resolution (h, w) / 2^k."""

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 1, out_channels: int | None = None,
                 channels: Sequence[int] = (64, 128, 128), blocks_per_level: int = 2,
                 attention_levels: Sequence[int] = (2,), attention_heads: int = 4, emb_dim: int = 256,
                 num_classes: int = 0, label_factors: Sequence[int] | None = None,
                 cross_attention_dim: int | None = None, pooled_context: bool = False, extra_in_channels: int = 0,
                 dropout: float = 0.0, skip_scale: float = 2 ** -0.5, attention_backend: str = "auto",
                 patch_size: int = 1):
        super().__init__()
        channels = list(channels)
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"UNet2D channels must be a non-empty list of positive widths, got {channels}")
        if any(c % attention_heads for k, c in enumerate(channels) if k in attention_levels):
            raise ValueError(f"the widths of attention_levels {list(attention_levels)} must divide by "
                             f"attention_heads={attention_heads}")
        self.out_ch = out_channels or in_channels
        self.skip_scale = skip_scale
        self.gradient_checkpointing = False
        self.init_conditioning(emb_dim, num_classes, label_factors, cross_attention_dim, pooled_context)
        block = dict(blocks=blocks_per_level, emb_dim=emb_dim, heads=attention_heads,
                     context_dim=cross_attention_dim, dropout=dropout, backend=attention_backend)
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.patch = patch_size  # space-to-depth (Hoogeboom et al. 2023): level 0 runs at (h, w) / patch_size
        self.in_conv = nn.Conv2d((in_channels + extra_in_channels) * patch_size ** 2, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for k, c in enumerate(channels):
            self.down.append(Level(channels[max(k - 1, 0)] if k else channels[0], c, attention=k in attention_levels,
                                   **block))
            if k < len(channels) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = Level(channels[-1], channels[-1], attention=True, **{**block, "blocks": 1})
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for k in reversed(range(len(channels))):
            self.up.append(Level(2 * channels[k], channels[k], attention=k in attention_levels, **block))
            if k > 0:
                self.upsample.append(nn.Conv2d(channels[k], channels[k - 1], 3, padding=1))
        self.out_norm = _norm(channels[0])
        self.out_conv = nn.Conv2d(channels[0], self.out_ch * patch_size ** 2, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        self.total_factor = 2 ** (len(channels) - 1) * patch_size

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: Mapping[str, Any] | None = None) -> torch.Tensor:
        cond = cond or {}
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"UNet2D expects (batch, {self.config.in_channels}, height, width), got {tuple(x.shape)}")
        if x.shape[-2] % self.total_factor or x.shape[-1] % self.total_factor:
            raise ValueError(f"height x width {x.shape[-2]}x{x.shape[-1]} must divide by {self.total_factor}")
        emb = self.embed_conditions(x, noise_level, cond)                      # (b, emb_dim)
        context, context_mask = cond.get("context"), cond.get("context_mask")
        x = nn.functional.pixel_unshuffle(self.concat_channels(x, cond, self.config.extra_in_channels), self.patch)
        h = self.in_conv(x)                                                     # (b, c0, h / p, w / p)
        skips = []
        for k, level in enumerate(self.down):
            h = self.run(level, h, emb, context, context_mask)                 # (b, c_k, h / 2^k, w / 2^k)
            skips.append(h)
            if k < len(self.downsample):
                h = self.downsample[k](h)
        h = self.run(self.mid, h, emb, context, context_mask)
        for k, level in enumerate(self.up):
            h = torch.cat([h, skips.pop() * self.skip_scale], dim=1)
            h = self.run(level, h, emb, context, context_mask)
            if k < len(self.upsample):
                h = self.upsample[k](nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.out_conv(nn.functional.silu(self.out_norm(h)))               # (b, c p^2, h / p, w / p)
        return nn.functional.pixel_shuffle(h, self.patch)                     # (b, c, h, w)


def unet2d_tiny(**kw) -> UNet2D:
    """~0.2M parameters: tests."""
    return UNet2D(**{"channels": (16, 32), "blocks_per_level": 1, "attention_levels": (1,), "attention_heads": 2,
                     "emb_dim": 64, **kw})


def unet2d_small(**kw) -> UNet2D:
    """64-128-128 at 32, 16, 8 pixels, attention at 8x8, ~4M parameters: MNIST on a CPU."""
    return UNet2D(**{"channels": (64, 128, 128), "blocks_per_level": 2, "attention_levels": (2,), **kw})


def unet2d_base(**kw) -> UNet2D:
    """128-256-256-256, attention at 16x16 and 8x8, ~35M parameters: 64x64 images on a GPU."""
    return UNet2D(**{"channels": (128, 256, 256, 256), "blocks_per_level": 2, "attention_levels": (1, 2),
                     "attention_heads": 8, "emb_dim": 512, **kw})


UNET2D_PRESETS = {"tiny": unet2d_tiny, "small": unet2d_small, "base": unet2d_base}
