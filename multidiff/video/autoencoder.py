"""Video autoencoder for latent diffusion: diffusers' AutoencoderKL applied frame by frame
(Blattmann et al. 2023 start from such a per-frame image VAE), registered as ``video_vae`` for
``objective.kind: autoencoder``.

(batch, channels, frames, height, width) <-> latents (batch, latent_channels, frames, height / f,
width / f), f = 2 ** (levels - 1). The spatio-temporal U-Net then runs on the latents unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks it up here)
from einops import rearrange

from ..nn.modeling import SafetensorsModelMixin

VAE_PRESETS = {
    # name: (block_out_channels, latent_channels, layers_per_block)
    "tiny": ((16, 32), 4, 1),          # f = 2: tests
    "small": ((32, 64, 64), 4, 1),     # f = 4: 32x32 Moving MNIST -> 8x8x4 on CPU
    "light": ((16, 32, 64), 4, 1),     # f = 4 with half the full-resolution width: 2.2x small's frames/s on CPU
    "base": ((64, 128, 256, 256), 4, 2),  # f = 8: Stable Diffusion's layout at a quarter of its width
}


class FrameLatents:
    """A diagonal Gaussian over (batch, latent_channels, frames, h, w), from per-frame posteriors."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean, self.logvar = mean, logvar.clamp(-30.0, 20.0)
        self.std, self.var = torch.exp(0.5 * self.logvar), torch.exp(self.logvar)

    def sample(self, generator=None) -> torch.Tensor:
        from ..core.utils import randn_like

        return self.mean + self.std * randn_like(self.mean, generator)

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class _Encoded:
    latent_dist: FrameLatents


@dataclass
class _Decoded:
    sample: torch.Tensor


class FrameVAE(SafetensorsModelMixin, ConfigMixin):
    """AutoencoderKL on every frame: encode(x).latent_dist / decode(z).sample as diffusers' autoencoders."""

    @register_to_config
    def __init__(self, in_channels: int = 1, block_out_channels=(32, 64, 64), latent_channels: int = 4,
                 layers_per_block: int = 1, norm_num_groups: int = 8):
        super().__init__()
        levels = len(block_out_channels)
        self.vae = AutoencoderKL(in_channels=in_channels, out_channels=in_channels,
                                 down_block_types=("DownEncoderBlock2D",) * levels,
                                 up_block_types=("UpDecoderBlock2D",) * levels,
                                 block_out_channels=tuple(block_out_channels), latent_channels=latent_channels,
                                 layers_per_block=layers_per_block, norm_num_groups=norm_num_groups)
        self.factor = 2 ** (levels - 1)

    def encode(self, x: torch.Tensor) -> _Encoded:
        b = x.shape[0]
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        posterior = self.vae.encode(frames).latent_dist
        back = lambda v: rearrange(v, "(b t) c h w -> b c t h w", b=b)  # noqa: E731
        return _Encoded(FrameLatents(back(posterior.mean), back(posterior.logvar)))

    def decode(self, z: torch.Tensor) -> _Decoded:
        b = z.shape[0]
        out = self.vae.decode(rearrange(z, "b c t h w -> (b t) c h w")).sample
        return _Decoded(rearrange(out, "(b t) c h w -> b c t h w", b=b))


def build_frame_vae(preset: str = "small", in_channels: int = 1, **overrides) -> FrameVAE:
    if preset not in VAE_PRESETS:
        raise ValueError(f"unknown video VAE preset {preset!r}; known: {sorted(VAE_PRESETS)}")
    channels, latent, layers = VAE_PRESETS[preset]
    kw = {"block_out_channels": channels, "latent_channels": latent, "layers_per_block": layers, **overrides}
    kw.setdefault("norm_num_groups", math.gcd(*kw["block_out_channels"], 32))
    return FrameVAE(in_channels=in_channels, **kw)


@dataclass
class FrameVAEParams:
    """A preset of multidiff.video.autoencoder (tiny / small / base) and overrides."""

    preset: str = "small"
    block_out_channels: list[int] | None = None
    latent_channels: int | None = None
    layers_per_block: int | None = None


def build_frame_vae_entry(params: FrameVAEParams, spec, *, gradient_checkpointing: bool = False) -> FrameVAE:
    overrides = {k: v for k, v in vars(params).items() if k != "preset" and v is not None}
    model = build_frame_vae(params.preset, in_channels=spec.sample_shape[0], **overrides)
    h, w = spec.sample_shape[-2:]
    if h % model.factor or w % model.factor:
        raise ValueError(f"frame size {h}x{w} must be a multiple of the VAE's down-sampling {model.factor}")
    return model
