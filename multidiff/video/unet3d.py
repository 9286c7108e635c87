"""Spatio-temporal U-Net on videos (batch, channels, frames, height, width).

Design (Ho et al. 2022, "Video Diffusion Models", Sec. 3 / Fig. 1; Singer et al. 2022,
"Make-A-Video", Sec. 3.2 "pseudo-3D" layers):
  * per-frame 2D residual blocks (3x3 convs, GroupNorm, FiLM from the noise-level + class
    embedding), each followed by a *temporal convolution* over frames (kernel
    ``temporal_kernel`` x 1 x 1) added residually with a zero-initialised projection, so at
    initialisation every temporal layer is the identity and the network is exactly a 2D image
    U-Net applied to each frame (the Make-A-Video initialisation);
  * factorised attention: spatial self-attention over the height x width tokens of each frame
    at the levels in ``spatial_attention_levels`` (coarse ones), with optional cross-attention
    to a conditioning sequence there; temporal self-attention over the frames of each pixel at
    every level (``temporal_attention``). Temporal attention uses rotary position embeddings
    over the frame index (Su et al. 2021, RoPE): the scores depend only on frame *differences*
    (relative position, as VDM's relative position embeddings), so a model trained on 16
    frames runs on 8 or 32. All attention goes through ``multidiff.nn.attention`` (torch SDPA,
    xformers optional), which never holds a frames x frames or pixels x pixels matrix on the
    flash / memory-efficient paths;
  * spatial-only down / up-sampling (stride-2 conv, nearest + conv), additive skips scaled by
    1/sqrt(2) as in multidiff.audio.unet1d; the frame count is never down-sampled, so any
    frame count >= 1 works and height / width must divide by 2 ** (levels - 1);
  * concatenated conditioning channels ``cond["concat"]`` (batch, extra_in_channels, frames,
    height, width): for frame prediction / interpolation, a mask channel (1 = given frame)
    and the given frames (zeros elsewhere), as in VDM's "reconstruction guidance"-free
    conditional variant and Voleti et al. 2022 (MCVD masked conditional video diffusion);
  * image mode, for joint image / video training (VDM Sec. 3.1): ``forward(..., image_mode=True)``
    or a 1-frame input skips every temporal layer; per sample, ``cond["image_mode"]`` (batch,)
    bool zeroes the temporal residuals of those samples, so a batch can mix videos with
    "videos" made of independent images.

Conditioning mapping keys (all optional; missing means unconditional): ``label`` (batch,) long
(-1 or num_classes = null label, for classifier-free guidance), ``context`` (batch, tokens,
cross_attention_dim) with ``context_mask`` (batch, tokens) bool, ``concat`` (see above),
``image_mode`` (batch,) bool. With ``pooled_context`` the mean of the context's real tokens is
also added to the noise-level embedding (multidiff.nn.PooledContextEmbedding), as a label is.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up here)
from einops import rearrange
from torch import nn

from ..nn import Attention, FiLM
from ..nn.attention import attention
from ..nn.conditioning import ConditionedBackbone
from ..nn.modeling import SafetensorsModelMixin


def _groups(channels: int, preferred: int = 32) -> int:
    return max(math.gcd(channels, preferred), 1)


def _gate(delta: torch.Tensor, gate: torch.Tensor | None, frames: int) -> torch.Tensor:
    """Multiply a ((batch frames), ...) residual by a per-sample gate (batch,) (1 = video, 0 = image)."""
    if gate is None:
        return delta
    return delta * gate.to(delta.dtype).repeat_interleave(frames).reshape(-1, *([1] * (delta.ndim - 1)))


class TemporalConv(nn.Module):
    """Residual temporal convolution over frames, identity at initialisation.

    h ((batch frames), channels, height, width) -> same. Computes
    h + sum_k W_k silu(norm(h))[t + k - k//2] with zero-padding at the clip ends; the W_k are one
    1x1 convolution to kernel x channels outputs (zero-initialised) whose chunks are shifted over
    frames, so everything stays a 2D convolution (fast on CPUs, no 3D-conv layout copies).
    """

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be odd and >= 1, got {kernel}")
        self.kernel = kernel
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.proj = nn.Conv2d(channels, kernel * channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, frames: int, gate: torch.Tensor | None = None) -> torch.Tensor:
        y = self.proj(F.silu(self.norm(h)))
        y = y.view(-1, frames, self.kernel, *h.shape[1:])  # (b, f, k, c, H, W)
        half = self.kernel // 2
        delta = y[:, :, half].clone()
        for k in range(self.kernel):
            shift = k - half  # output frame t reads input frame t + shift
            if shift == 0 or abs(shift) >= frames:
                continue
            if shift < 0:
                delta[:, -shift:] += y[:, :shift, k]
            else:
                delta[:, :-shift] += y[:, shift:, k]
        return h + _gate(delta.reshape(h.shape), gate, frames)


class ResBlock3d(nn.Module):
    """Per-frame 2D residual block (GroupNorm-SiLU-Conv, FiLM, GroupNorm-SiLU-Dropout-Conv (zero
    init), skip), then a :class:`TemporalConv`. h ((batch frames), in, H, W) -> ((batch frames), out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0,
                 temporal_kernel: int = 3):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.film = FiLM(emb_dim, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.temporal = TemporalConv(out_channels, temporal_kernel) if temporal_kernel > 1 else None

    def forward(self, h, emb, frames: int, temporal: bool, gate=None, context=None, context_mask=None):
        y = self.conv1(F.silu(self.norm1(h)))
        y = F.silu(self.film(self.norm2(y), emb))
        y = self.skip(h) + self.conv2(self.dropout(y))
        if temporal and self.temporal is not None:
            y = self.temporal(y, frames, gate)
        return y


def _rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of x (..., tokens, head_dim) at positions (tokens,)."""
    d = x.shape[-1]
    half = d // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * freqs[None]  # (tokens, half)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return torch.cat([rotated, x[..., 2 * half:]], dim=-1) if d % 2 else rotated


class RotaryAttention(Attention):
    """multidiff.nn.Attention (self-attention) with rotary position embeddings on q and k, so
    scores depend on relative positions only; tokens (batch, tokens, dim) -> same."""

    def forward(self, x: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
        q = rearrange(self.to_q(x), "b n (h d) -> b h n d", h=self.heads)
        k, v = rearrange(self.to_kv(x), "b n (two h d) -> two b h n d", two=2, h=self.heads)
        q, k = self.q_norm(q), self.k_norm(k)
        pos = torch.arange(x.shape[1], device=x.device)
        q, k = _rotary(q, pos), _rotary(k, pos)
        out = attention(q, k, v, backend=self.backend)
        return self.out(rearrange(out, "b h n d -> b n (h d)"))


class SpatialAttention(nn.Module):
    """Self-attention over the H x W tokens of each frame, then optional cross-attention to a
    context sequence (batch, tokens, context_dim) shared by the clip's frames."""

    def __init__(self, channels: int, heads: int, context_dim: int | None = None, backend: str = "auto"):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attn = Attention(channels, heads, backend=backend)
        self.cross_norm = nn.LayerNorm(channels) if context_dim else None
        self.cross = Attention(channels, heads, context_dim=context_dim, backend=backend) if context_dim else None

    def forward(self, h, emb, frames: int, temporal: bool, gate=None, context=None, context_mask=None):
        H, W = h.shape[-2:]
        tokens = rearrange(self.norm(h), "n c h w -> n (h w) c")
        y = rearrange(h, "n c h w -> n (h w) c") + self.attn(tokens)
        if self.cross is not None and context is not None:
            ctx = context.to(y.dtype).repeat_interleave(frames, dim=0)
            mask = None if context_mask is None else context_mask.repeat_interleave(frames, dim=0)
            y = y + self.cross(self.cross_norm(y), context=ctx, context_mask=mask)
        return rearrange(y, "n (h w) c -> n c h w", h=H, w=W)


class TemporalAttention(nn.Module):
    """Self-attention over the frames of each pixel with rotary (relative) frame positions;
    residual with a zero-initialised output, so it is the identity at initialisation."""

    def __init__(self, channels: int, heads: int, backend: str = "auto"):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.attn = RotaryAttention(channels, heads, backend=backend)

    def forward(self, h, emb, frames: int, temporal: bool, gate=None, context=None, context_mask=None):
        if not temporal:
            return h
        H, W = h.shape[-2:]
        tokens = rearrange(h, "(b f) c h w -> (b h w) f c", f=frames)
        delta = rearrange(self.attn(self.norm(tokens)), "(b h w) f c -> (b f) c h w", h=H, w=W)
        return h + _gate(delta, gate, frames)


class UNet3D(SafetensorsModelMixin, ConfigMixin, ConditionedBackbone):
    """Video U-Net: forward(x (batch, in_channels, frames, height, width), noise_level (batch,), cond,
    image_mode=False) -> (batch, out_channels, frames, height, width).

    channels[i] is the width at level i; level i runs at (height, width) / (patch_size * 2**i). Every
    level has ``blocks_per_level`` residual blocks (each with its temporal conv), spatial attention
    at the levels in ``spatial_attention_levels`` (the coarsest always, when attention_heads > 0)
    and temporal attention at the levels in ``temporal_attention_levels`` (None = every level) when
    ``temporal_attention``. ``extra_in_channels`` are concatenated to the input from
    ``cond["concat"]`` (zeros when absent). ``patch_size`` > 1 embeds non-overlapping patches
    (strided conv in, transposed conv out), the fast choice on CPUs.

    ``skips``: "add" (one skip per level, added to the upsampled path and scaled by ``skip_scale``) or
    "concat" (ADM / the image UNet2D's topology: blocks at every level including the coarsest, and
    each up level's first block reads [path, skip * skip_scale] concatenated on channels).

    ``stacked_frames`` = T > 0 selects the stacked layout instead: the T frames of a clip (exactly T)
    are stacked on the channel axis of one 2D U-Net (no temporal layers), as in MCVD (Voleti et al.
    2022, Sec. 3) and SimVP (Gao et al. 2022): every convolution sees every frame, so content moving
    across frames is a spatial shift a convolution can learn, at the cost of a fixed frame count.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, in_channels: int = 1, out_channels: int | None = None,
                 channels: Sequence[int] = (32, 64, 128), blocks_per_level: int = 1,
                 spatial_attention_levels: Sequence[int] = (2,), temporal_attention: bool = True,
                 attention_heads: int = 4, emb_dim: int = 128, num_classes: int = 0,
                 cross_attention_dim: int | None = None, extra_in_channels: int = 0, dropout: float = 0.0,
                 temporal_kernel: int = 3, attention_backend: str = "auto", skip_scale: float = 2 ** -0.5,
                 label_factors: Sequence[int] | None = None, patch_size: int = 1,
                 temporal_attention_levels: Sequence[int] | None = None, stacked_frames: int = 0,
                 pooled_context: bool = False, skips: str = "add"):
        super().__init__()
        channels = list(channels)
        if skips not in ("add", "concat"):
            raise ValueError(f"skips must be 'add' or 'concat', got {skips!r}")
        if stacked_frames < 0:
            raise ValueError(f"stacked_frames must be >= 0, got {stacked_frames}")
        stack = max(stacked_frames, 1)
        if stacked_frames:  # a 2D U-Net over the whole clip: no temporal layers to build
            temporal_attention, temporal_kernel = False, 1
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"UNet3D channels must be a non-empty list of positive widths, got {channels}")
        if attention_heads > 0 and any(c % attention_heads for c in channels):
            raise ValueError(f"every width in channels={channels} must divide by attention_heads={attention_heads}")
        self.out_ch = out_channels or in_channels
        self.gradient_checkpointing = False
        self.init_conditioning(emb_dim, num_classes, label_factors, cross_attention_dim, pooled_context)
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        if patch_size == 1:
            self.in_conv = nn.Conv2d((in_channels + extra_in_channels) * stack, channels[0], 3, padding=1)
        else:  # patching (Hoogeboom et al. 2023, simple diffusion, Sec. 3.2): level 0 runs at (H, W) / patch_size
            self.in_conv = nn.Conv2d((in_channels + extra_in_channels) * stack, channels[0], patch_size,
                                     stride=patch_size)
        n_levels = len(channels)
        spatial = set(spatial_attention_levels) | ({n_levels - 1} if attention_heads > 0 else set())
        temporal_levels = set(range(n_levels) if temporal_attention_levels is None else temporal_attention_levels)

        def make_blocks(ch, level, first_in=None):
            blocks = nn.ModuleList()
            for k in range(blocks_per_level):
                blocks.append(ResBlock3d(first_in if k == 0 and first_in else ch, ch, emb_dim, dropout, temporal_kernel))
                if attention_heads > 0 and level in spatial:
                    blocks.append(SpatialAttention(ch, attention_heads, cross_attention_dim, attention_backend))
                if attention_heads > 0 and temporal_attention and level in temporal_levels:
                    blocks.append(TemporalAttention(ch, attention_heads, attention_backend))
            return blocks

        concat = skips == "concat"
        self.down_blocks, self.downsamplers = nn.ModuleList(), nn.ModuleList()
        for level in range(n_levels - 1):
            self.down_blocks.append(make_blocks(channels[level], level))
            self.downsamplers.append(nn.Conv2d(channels[level], channels[level + 1], 3, stride=2, padding=1))
        if concat:  # the coarsest level has blocks (and a skip) of its own too
            self.down_blocks.append(make_blocks(channels[-1], n_levels - 1))
        c = channels[-1]
        self.mid_blocks = nn.ModuleList([ResBlock3d(c, c, emb_dim, dropout, temporal_kernel)])
        if attention_heads > 0:
            self.mid_blocks.append(SpatialAttention(c, attention_heads, cross_attention_dim, attention_backend))
            if temporal_attention and n_levels - 1 in temporal_levels:
                self.mid_blocks.append(TemporalAttention(c, attention_heads, attention_backend))
        self.mid_blocks.append(ResBlock3d(c, c, emb_dim, dropout, temporal_kernel))
        self.upsamplers, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        if concat:  # up level k: [path, skip] (2 c_k) -> c_k, then up to level k - 1
            for level in reversed(range(n_levels)):
                self.up_blocks.append(make_blocks(channels[level], level, first_in=2 * channels[level]))
                if level > 0:
                    self.upsamplers.append(nn.Conv2d(channels[level], channels[level - 1], 3, padding=1))
        else:
            for level in reversed(range(n_levels - 1)):
                self.upsamplers.append(nn.Conv2d(channels[level + 1], channels[level], 3, padding=1))
                self.up_blocks.append(make_blocks(channels[level], level))
        self.out_norm = nn.GroupNorm(_groups(channels[0]), channels[0])
        if patch_size == 1:
            self.out_conv = nn.Conv2d(channels[0], self.out_ch * stack, 3, padding=1)
        else:
            self.out_conv = nn.ConvTranspose2d(channels[0], self.out_ch * stack, patch_size, stride=patch_size)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        self.total_factor = 2 ** (n_levels - 1) * patch_size

    def forward(self, x: torch.Tensor, noise_level: torch.Tensor, cond: Mapping[str, Any] | None = None,
                image_mode: bool = False) -> torch.Tensor:
        cond = cond or {}
        cin = self.config.in_channels
        if x.ndim != 5 or x.shape[1] != cin:
            raise ValueError(f"UNet3D expects (batch, {cin}, frames, height, width), got {tuple(x.shape)}")
        b, _, frames, height, width = x.shape
        if height % self.total_factor or width % self.total_factor:
            raise ValueError(f"height x width {height}x{width} must divide by patch_size * 2 ** (levels - 1) = "
                             f"{self.total_factor}")
        stacked = self.config.stacked_frames
        if stacked and frames != stacked:
            raise ValueError(f"this UNet3D stacks exactly {stacked} frames on its channel axis "
                             f"(stacked_frames={stacked}), got a clip of {frames} frames")
        emb = self.embed_conditions(x, noise_level, cond)                    # (b, emb_dim)
        context, context_mask = cond.get("context"), cond.get("context_mask")
        x = self.concat_channels(x, cond, self.config.extra_in_channels)     # (b, c + extra, f, h, w)
        if stacked:  # one 2D "frame" holding the whole clip
            x, frames = rearrange(x, "b c f h w -> b (c f) 1 h w"), 1
        emb = emb.to(x.dtype).repeat_interleave(frames, dim=0)  # one row per (2D) frame: ((b f), emb_dim)
        temporal = not image_mode and frames > 1
        gate = cond.get("image_mode")
        if gate is not None:
            gate = 1 - gate.reshape(b).to(device=x.device, dtype=x.dtype)
        h = self.in_conv(rearrange(x, "b c f h w -> (b f) c h w"))
        args = (emb, frames, temporal, gate, context, context_mask)
        skips = []
        for k, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = self.run(block, h, *args)
            skips.append(h)                                                  # ((b f), c_k, h_k, w_k)
            if k < len(self.downsamplers):
                h = self.downsamplers[k](h)
        for block in self.mid_blocks:
            h = self.run(block, h, *args)
        if self.config.skips == "concat":
            for k, blocks in enumerate(self.up_blocks):
                h = torch.cat([h, skips.pop() * self.config.skip_scale], dim=1)  # ((b f), 2 c_k, h_k, w_k)
                for block in blocks:
                    h = self.run(block, h, *args)
                if k < len(self.upsamplers):
                    h = self.upsamplers[k](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        else:
            for up, blocks in zip(self.upsamplers, self.up_blocks):
                h = (up(F.interpolate(h, scale_factor=2.0, mode="nearest")) + skips.pop()) * self.config.skip_scale
                for block in blocks:
                    h = self.run(block, h, *args)
        out = self.out_conv(F.silu(self.out_norm(h)))
        if stacked:
            return rearrange(out, "b (c f) h w -> b c f h w", f=stacked)
        return rearrange(out, "(b f) c h w -> b c f h w", b=b)


# ------------------------------------------------------------------------------ presets
def unet3d_tiny(**kw) -> UNet3D:
    """~0.1M parameters: tests."""
    return UNet3D(**{"channels": (16, 32), "blocks_per_level": 1, "spatial_attention_levels": (1,),
                     "attention_heads": 2, "emb_dim": 64, **kw})


def unet3d_small(**kw) -> UNet3D:
    """~1.4M parameters (1-channel input): 32x32 Moving MNIST on CPU (the recipes add patch_size 2)."""
    return UNet3D(**{"channels": (32, 64, 128), "blocks_per_level": 1, "spatial_attention_levels": (2,),
                     "attention_heads": 4, "emb_dim": 128, **kw})


def unet3d_base(**kw) -> UNet3D:
    """~16M parameters: 64x64 clips on a GPU."""
    return UNet3D(**{"channels": (64, 128, 256, 256), "blocks_per_level": 2, "spatial_attention_levels": (2, 3),
                     "attention_heads": 8, "emb_dim": 256, **kw})


def unet3d_large(**kw) -> UNet3D:
    """~49M parameters."""
    return UNet3D(**{"channels": (128, 256, 384, 512), "blocks_per_level": 2, "spatial_attention_levels": (2, 3),
                     "attention_heads": 8, "emb_dim": 512, **kw})


UNET3D_PRESETS = {"tiny": unet3d_tiny, "small": unet3d_small, "base": unet3d_base, "large": unet3d_large}
